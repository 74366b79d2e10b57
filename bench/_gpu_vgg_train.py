"""The budgets, data and baseline training of ``bench/bench_gpu_vgg.py``."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from _upsampled import NORMALISATION as MNIST_NORMALISATION
from _upsampled import load_mnist5k_upsampled
from torch import nn

from worker.data import DataBundle, DatasetError, load_cifar10
from worker.training import evaluate
from worker.zoo import get_model

T = TypeVar("T")


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Recipe:
    """How the starting model is trained from scratch (see the module docstring)."""

    epochs: int
    lr: float = 0.1
    weight_decay: float = 5e-4
    batch_size: int = 128
    pct_start: float = 0.15
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    pad: int = 4
    flip: bool = True
    amp: bool = True  # bfloat16 autocast, only ever on CUDA


@dataclass(frozen=True)
class Budget:
    """Everything sized by --smoke or the command line."""

    train_epochs: int
    trials: int
    epochs_per_trial: int
    final_epochs: int
    batch_size: int
    train_lr: float
    max_train: int | None
    max_val: int | None
    sensitivity_samples: int
    sensitivity_points: int
    verify_top: int


@dataclass(frozen=True)
class Data:
    """The loaded data and what the report must say about it."""

    bundle: DataBundle
    is_cifar10: bool
    description: str
    fallback_reason: str | None


def make_budget(args: argparse.Namespace, *, is_cifar10: bool) -> Budget:
    """Explicit arguments win; otherwise smoke sizes, or the full GPU budget."""

    def pick(value: T | None, smoke: T, full: T) -> T:
        if value is not None:
            return value
        return smoke if args.smoke else full

    return Budget(
        train_epochs=pick(args.train_epochs, 1, 160 if is_cifar10 else 40),
        trials=pick(args.trials, 2, 60),
        epochs_per_trial=pick(args.epochs_per_trial, 1, 3),
        final_epochs=pick(args.final_epochs, 1, 30),
        batch_size=pick(args.batch_size, 32, 128),
        train_lr=pick(args.train_lr, 0.05, 0.1),
        max_train=pick(args.max_train, 400, None),
        max_val=pick(args.max_val, 200, None),
        sensitivity_samples=100 if args.smoke else 2000,
        sensitivity_points=3 if args.smoke else 9,
        verify_top=1 if args.smoke else 3,
    )


# ------------------------------------------------------------------------------------- data


def load_data(args: argparse.Namespace) -> Data:
    """CIFAR-10 from --cifar-root, else (loudly) mnist5k upsampled to 3x32x32."""
    reason = "no --cifar-root was given"
    if args.cifar_root is not None:
        root = Path(args.cifar_root).expanduser()
        try:
            if not root.is_dir():
                raise DatasetError("no such directory")
            bundle = load_cifar10(root, allowed_roots=(root,), seed=args.seed)
        except DatasetError as exc:
            reason = f"--cifar-root {str(root)!r} does not hold CIFAR-10: {exc}"
            if args.require_cifar:
                raise SystemExit(f"error: {reason}") from None
        else:
            return Data(
                bundle=bundle,
                is_cifar10=True,
                description=f"CIFAR-10 from {root} (torchvision format), CIFAR-10 mean/std",
                fallback_reason=None,
            )
    elif args.require_cifar:
        raise SystemExit("error: --require-cifar needs --cifar-root")
    bundle = load_mnist5k_upsampled(seed=args.seed)
    return Data(
        bundle=bundle,
        is_cifar10=False,
        description=(
            "mnist5k upsampled 28→32 (bilinear) and replicated to 3 channels; "
            + MNIST_NORMALISATION
        ),
        fallback_reason=reason,
    )


def cap(data: DataBundle, *, max_train: int | None, max_val: int | None, seed: int) -> DataBundle:
    """Seeded random subsets of the splits (for smoke runs); the full splits when None."""
    generator = torch.Generator().manual_seed(seed)

    def subset(
        x: torch.Tensor, y: torch.Tensor, n: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if n is None or n >= len(y):
            return x, y
        idx = torch.randperm(len(y), generator=generator)[:n].sort().values
        return x[idx].contiguous(), y[idx].contiguous()

    x_train, y_train = subset(data.x_train, data.y_train, max_train)
    x_val, y_val = subset(data.x_val, data.y_val, max_val)
    return replace(data, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)


def announce_fallback(data: Data) -> None:
    """The banner printed (stdout and stderr) whenever the data is not CIFAR-10."""
    if data.is_cifar10:
        return
    banner = "\n".join(
        [
            "",
            "!" * 100,
            "!!! NOT CIFAR-10 — running on mnist5k upsampled to 3x32x32 instead.",
            f"!!! Why: {data.fallback_reason}.",
            "!!! These numbers exercise the pipeline; they are NOT comparable with the 32x / 37x "
            "CIFAR-10 anchors.",
            "!" * 100,
            "",
        ]
    )
    print(banner)
    print(banner, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------- training


def augment(x: torch.Tensor, generator: torch.Generator, *, pad: int, flip: bool) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and optional horizontal flip, per example.

    ``x`` is (B, C, H, W) on any device; the random draws come from the CPU ``generator``.
    """
    b, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        # Advanced indices around a slice: the result is (B, H, W, C).
        x = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x.contiguous()


@dataclass(frozen=True)
class TrainRecord:
    accuracy: float
    seconds: float
    history: list[dict[str, float]]
    reused: bool = False


def train_from_scratch(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe,
    *,
    device: torch.device,
    seed: int,
    eval_every: int,
    log: Callable[[str], None],
) -> TrainRecord:
    """Train ``model`` in place with ``recipe``; evaluate every ``eval_every`` epochs and last."""
    started = time.perf_counter()
    model.to(device)
    x_train = data.x_train.to(device)  # whole split on the device: CIFAR-10 is 614 MB
    y_train = data.y_train.to(device)
    n = len(y_train)
    steps = math.ceil(n / recipe.batch_size)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=recipe.lr,
        momentum=0.9,  # OneCycleLR cycles it between 0.95 and 0.85
        weight_decay=recipe.weight_decay,
        nesterov=True,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=recipe.lr,
        total_steps=recipe.epochs * steps,
        pct_start=recipe.pct_start,
        anneal_strategy="cos",
        div_factor=recipe.div_factor,
        final_div_factor=recipe.final_div_factor,
    )
    generator = torch.Generator().manual_seed(seed)
    use_amp = recipe.amp and device.type == "cuda"
    history: list[dict[str, float]] = []
    accuracy = float("nan")
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        epoch_started = time.perf_counter()
        order = torch.randperm(n, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        for lo in range(0, n, recipe.batch_size):
            idx = order[lo : lo + recipe.batch_size]
            if len(idx) < 2:  # batch norm cannot train on a batch of one
                continue
            xb = augment(x_train[idx], generator, pad=recipe.pad, flip=recipe.flip)
            with autocast(device, enabled=use_amp):
                logits = model(xb)  # (B, classes)
            loss = F.cross_entropy(logits.float(), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(idx)
        train_loss = float(loss_sum) / n
        if not math.isfinite(train_loss):
            raise RuntimeError(f"training diverged at epoch {epoch} (loss {train_loss})")
        if epoch % eval_every == 0 or epoch == recipe.epochs:
            accuracy = evaluate(model, data, device=device).accuracy
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_accuracy": accuracy,
                    "epoch_s": time.perf_counter() - epoch_started,
                    "elapsed_s": time.perf_counter() - started,
                }
            )
            log(
                f"epoch {epoch}/{recipe.epochs}: train loss {train_loss:.4f}, "
                f"val {100 * accuracy:.2f}%, {time.perf_counter() - started:.0f} s"
            )
    del x_train, y_train
    model.to("cpu").eval()
    return TrainRecord(accuracy=accuracy, seconds=time.perf_counter() - started, history=history)


def autocast(device: torch.device, *, enabled: bool) -> Any:
    """bfloat16 autocast on CUDA when enabled, else a no-op context."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def state_digest(model: nn.Module) -> str:
    """sha256 (first 12 hex digits) of a state_dict's names and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()[:12]


def baseline_model(
    arch: str,
    data: Data,
    recipe: Recipe,
    run_dir: Path,
    *,
    device: torch.device,
    seed: int,
    retrain: bool,
    eval_every: int,
    log: Callable[[str], None],
) -> tuple[nn.Module, TrainRecord]:
    """Train the starting model, or reload the one a previous identical run saved."""
    bundle = data.bundle
    key = {
        "arch": arch,
        "data": bundle.name,
        "train": len(bundle.y_train),
        "val": len(bundle.y_val),
        "recipe": asdict(recipe),
        "seed": seed,
    }
    weights, meta_path = run_dir / "baseline.pt", run_dir / "baseline.json"
    torch.manual_seed(seed)
    model = get_model(arch, num_classes=bundle.num_classes, in_channels=bundle.input_shape[0])
    if not retrain and weights.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            log(f"reusing the trained baseline {weights} (--retrain to train again)")
            record = TrainRecord(
                accuracy=meta["accuracy"],
                seconds=meta["seconds"],
                history=meta["history"],
                reused=True,
            )
            return model.eval(), record
    record = train_from_scratch(
        model, bundle, recipe, device=device, seed=seed, eval_every=eval_every, log=log
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    meta_path.write_text(
        json.dumps(
            {
                "key": key,
                "accuracy": record.accuracy,
                "seconds": record.seconds,
                "history": record.history,
            },
            indent=2,
        )
        + "\n"
    )
    return model, record
