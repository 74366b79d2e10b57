"""GPU run: train VGG-11-BN / VGG-16-BN on CIFAR-10 to full accuracy, then compress with rankopt.

Usage (on a CUDA machine with CIFAR-10 in torchvision's format, i.e. ``cifar-10-batches-py``)::

    .venv/bin/python bench/bench_gpu_vgg.py --cifar-root /data/cifar10 --device cuda

Smoke test of the whole pipeline on a CPU (tiny budgets, a few minutes)::

    .venv/bin/python bench/bench_gpu_vgg.py --smoke --device cpu

For each architecture (``--arch``, default both):

1. **Data.** CIFAR-10 from ``--cifar-root`` through :func:`worker.data.load_cifar10` (train:
   the five data batches, 50,000 images; validation: ``test_batch``, 10,000; normalised with the
   CIFAR-10 training-set constants). Without ``--cifar-root``, or when that folder does not hold
   CIFAR-10, the same pipeline runs on mnist5k upsampled to 3x32x32 (see ``bench/_upsampled.py``)
   and every table and the JSON say so: those numbers are a pipeline exercise, not comparable
   with the published anchors. ``--require-cifar`` turns the fallback into an error.
2. **Training from scratch** (recipe below), to full accuracy: the usual figures for these
   networks are about 92 % (VGG-11-BN) and 93.5 % (VGG-16-BN) top-1 on CIFAR-10 after 100 to 200
   epochs; the default here is 160 (``--train-epochs``), not yet measured with this script on a
   GPU. The accuracy curve is recorded, and the report says whether the reference was reached.
   The trained weights are saved beside the results and reused by a later run with the same
   arch, data, recipe and seed (``--retrain`` trains again).
3. **Search** with rankopt: :func:`worker.search.prepare`, :func:`~worker.search.open_study`
   (a SQLite file under the run folder by default, so an interrupted run resumes with the same
   command; ``--storage memory`` for an in-memory study), :func:`~worker.search.run_trials` and
   :func:`~worker.search.finalize`, with the device passed through, objective ``params`` and
   the allowed drop ``--max-drop`` (1.0 point).
4. **Report**: baseline and final accuracy, drop, params and MACs ratios, the per-layer plan,
   wall time and peak GPU memory per phase, the device and versions, and the comparison with
   the published mixed-decomposition anchors (32x for VGG-11, 37x for VGG-16 parameter
   compression on CIFAR-10 with under 1 point of drop): PASS when our ratio exceeds the anchor
   at a drop of at most 1 point on CIFAR-10.

Training recipe (from scratch): SGD, Nesterov momentum cycled 0.95 → 0.85 → 0.95, weight decay
5e-4, batch 128, one-cycle learning rate (``torch.optim.lr_scheduler.OneCycleLR``: warm-up from
0.004 to 0.1 over the first 15 % of steps, cosine annealing to 4e-7), cross-entropy. Augmentation
on CIFAR-10: random crop 32 from the image zero-padded by 4 pixels (zero is the mean colour after
normalisation) and horizontal flip with probability 0.5; on the mnist5k fallback the random crop
only (a flipped digit is another symbol). On CUDA the forward pass runs under bfloat16 autocast
(``--no-amp`` for float32) and float32 matmuls may use TF32. The search's own fine-tuning is
rankopt's (no augmentation, distillation from the trained model, float32).

Markdown tables go to stdout, progress to stderr; numbers go to
``<out>/gpu_vgg_<arch>_<data>[_smoke].json`` and the search's outputs (compressed checkpoint,
report.json, pareto.png, study.db, baseline weights) to the folder of the same name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import optuna
import torch
import torch.nn.functional as F
from _common import machine_info, markdown_table, versions
from _upsampled import NORMALISATION as MNIST_NORMALISATION
from _upsampled import load_mnist5k_upsampled
from torch import nn

from worker.data import DataBundle, DatasetError, load_cifar10
from worker.search import (
    Progress,
    SearchConfig,
    best_feasible,
    finalize,
    finished_trials,
    open_study,
    prepare,
    run_trials,
)
from worker.training import evaluate, resolve_device
from worker.zoo import get_model

T = TypeVar("T")

ARCHS = ("rankopt:vgg11_bn", "rankopt:vgg16_bn")
#: Published mixed-decomposition results on CIFAR-10: parameter compression, < 1 point drop.
ANCHORS = {"rankopt:vgg11_bn": 32.0, "rankopt:vgg16_bn": 37.0}
ANCHOR_DROP = 1.0
#: Top-1 accuracy on CIFAR-10 that a well-trained CIFAR-style VGG with batch norm reaches.
FULL_ACCURACY = {"rankopt:vgg11_bn": 0.92, "rankopt:vgg16_bn": 0.935}
FULL_ACCURACY_SLACK = 0.005  # the baseline counts as "full" within half a point


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


# ----------------------------------------------------------------------------------- device


def configure_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 matmuls


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(
            {
                "name": torch.cuda.get_device_name(index),
                "index": index,
                "total_memory_gib": props.total_memory / 2**30,
                "capability": f"{props.major}.{props.minor}",
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
            }
        )
    else:
        info["name"] = machine_info()["cpu"]
    return info


class PhaseClock:
    """Wall time and peak GPU memory of each named phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.phases: dict[str, dict[str, float | None]] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if cuda else None
            self.phases[name] = {"seconds": time.perf_counter() - started, "peak_gib": peak}


# ----------------------------------------------------------------------------------- search


def search_config(args: argparse.Namespace, budget: Budget, device: torch.device) -> SearchConfig:
    return SearchConfig(
        trials=budget.trials,
        max_accuracy_drop=args.max_drop,
        objective="params",
        seed=args.seed,
        methods=tuple(args.methods) if args.methods else None,
        epochs_per_trial=budget.epochs_per_trial,
        final_epochs=budget.final_epochs,
        batch_size=budget.batch_size,
        sensitivity_samples=budget.sensitivity_samples,
        sensitivity_points=budget.sensitivity_points,
        verify_top=budget.verify_top,
        device=str(device),
    )


def study_name(config: SearchConfig, baseline: str, data: DataBundle) -> str:
    """Names the study by the baseline weights and the search settings (but the trial budget),
    so a resumed study only ever continues the very same search."""
    budget = ("device", "trials", "timeout_s")  # a larger budget continues the same study
    settings = {k: v for k, v in config.to_dict().items() if k not in budget}
    text = json.dumps(
        {"settings": settings, "data": data.name, "n": len(data.y_train)}, default=str
    )
    return f"gpu-vgg-{baseline}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def run_search(
    model: nn.Module,
    data: DataBundle,
    config: SearchConfig,
    run_dir: Path,
    *,
    arch: str,
    storage_kind: str,
    clock: PhaseClock,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], str]:
    """prepare → open_study → run_trials → finalize; returns the report and the storage used."""
    with clock.phase("prepare (baseline eval, inventory, EVBMF, teacher logits)"):
        ctx = prepare(model, data, config)
    name = study_name(config, state_digest(model), data)
    storage: str | optuna.storages.BaseStorage
    if storage_kind == "sqlite":
        storage = f"sqlite:///{(run_dir / 'study.db').resolve()}"
        where = f"{storage} (study {name})"
    else:
        storage = optuna.storages.InMemoryStorage()
        where = "in memory"
    with clock.phase("open study (sensitivity scan, seed plans)"):
        study = open_study(ctx, storage=storage, study_name=name)
    done = finished_trials(study)
    if done:
        log(f"resuming study {name}: {done}/{config.trials} trials already finished")

    def on_progress(p: Progress) -> None:
        best = "none yet" if p.best_compression is None else f"{p.best_compression:.2f}x"
        eta = "" if p.eta_s is None else f", ETA {p.eta_s:.0f} s"
        log(f"trial {p.done}/{p.total}: best feasible {best}{eta}")

    with clock.phase("search trials"):
        run_trials(ctx, study, on_progress=on_progress)
    best = best_feasible(study, config.max_accuracy_drop)
    log(
        "search done; best feasible trial: "
        + ("none" if best is None else f"#{best.number} at {best.user_attrs['compression']:.2f}x")
    )
    with clock.phase("finalize (long fine-tunes of the best candidates)"):
        kwargs = {"num_classes": data.num_classes, "in_channels": data.input_shape[0]}
        result = finalize(ctx, study, run_dir, arch={"arch": arch, "kwargs": kwargs})
    return result.report, where


# ----------------------------------------------------------------------------------- report


def anchor_goal(arch: str, report: dict[str, Any], is_cifar10: bool) -> dict[str, Any]:
    anchor = ANCHORS.get(arch)
    ratio = float(report["ratios"]["params"])
    drop = float(report["final"]["accuracy_drop"])
    beats = anchor is not None and ratio > anchor and drop <= ANCHOR_DROP
    if anchor is None:
        status = "n/a (no anchor)"
    elif not is_cifar10:
        status = "N/A: not CIFAR-10"
    else:
        status = "PASS" if beats else "MISS"
    return {
        "goal": f"params ratio > {anchor:g}x at drop ≤ {ANCHOR_DROP:g} pt on CIFAR-10"
        if anchor is not None
        else "-",
        "anchor": anchor,
        "ratio": ratio,
        "drop": drop,
        "comparable": is_cifar10,
        "would_pass": beats,
        "status": status,
    }


def full_accuracy_check(arch: str, accuracy: float, is_cifar10: bool) -> str:
    reference = FULL_ACCURACY.get(arch)
    if reference is None or not is_cifar10:
        return "n/a (not CIFAR-10)" if reference is not None else "n/a"
    gap = 100 * (reference - accuracy)
    if accuracy >= reference - FULL_ACCURACY_SLACK:
        return f"yes (reference {100 * reference:.1f}%)"
    return f"NO: {gap:.2f} pt short of {100 * reference:.1f}%"


def fmt_count(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def print_header(device: dict[str, Any], vers: dict[str, str]) -> None:
    print("\n## Device and versions\n")
    rows: list[list[object]] = [["device", f"{device['type']}: {device['name']}"]]
    if device["type"] == "cuda":
        rows += [
            ["GPU memory", f"{device['total_memory_gib']:.1f} GiB"],
            ["compute capability", device["capability"]],
            ["CUDA / cuDNN", f"{device['cuda']} / {device['cudnn']}"],
        ]
    else:
        rows.append(["note", "no CUDA device used: CPU run"])
    rows += [[name, version] for name, version in vers.items()]
    rows.append(["command", " ".join(["python", *sys.argv])])
    print(markdown_table(["", ""], rows))


def print_arch(result: dict[str, Any]) -> None:
    arch, report = result["arch"], result["report"]
    base, final, ratios = report["baseline"], report["final"], report["ratios"]
    train = result["train"]
    print(f"\n## {arch} on {result['data']['name']}\n")
    if not result["data"]["is_cifar10"]:
        print("**NOT CIFAR-10** — " + result["data"]["description"] + "\n")
    rows: list[list[object]] = [
        [
            "baseline accuracy",
            f"{100 * base['accuracy']:.2f}% after {train['epochs']} epoch(s) ("
            + ("reused from a previous run" if train["reused"] else f"{train['seconds']:.0f} s")
            + ")",
        ],
        ["reached full accuracy", result["full_accuracy"]],
        ["final accuracy", f"{100 * final['accuracy']:.2f}%"],
        [
            "accuracy drop",
            f"{final['accuracy_drop']:.2f} pt (allowed {result['search']['max_accuracy_drop']:g})",
        ],
        ["constraint met", "yes" if final["constraint_met"] else "NO"],
        [
            "params",
            f"{fmt_count(base['params'])} → {fmt_count(final['params'])} ({ratios['params']:.2f}x)",
        ],
        ["MACs", f"{fmt_count(base['macs'])} → {fmt_count(final['macs'])} ({ratios['macs']:.2f}x)"],
        [
            "chosen trial",
            "none: original kept" if report["chosen_trial"] is None else report["chosen_trial"],
        ],
        [
            "trials (complete / feasible / finished)",
            f"{result['trials_complete']} / {result['trials_feasible']} / "
            f"{result['trials_finished']}",
        ],
        ["study", result["study"]],
    ]
    print(markdown_table(["", ""], rows))
    print("\nPer-layer plan:\n")
    layer_rows = [
        [
            layer["layer"],
            layer["method"],
            "x".join(str(r) for r in layer["ranks"]) or "-",
            fmt_count(layer.get("params_before")),
            fmt_count(layer.get("params_after")),
            fmt_count(layer.get("macs_before")),
            fmt_count(layer.get("macs_after")),
        ]
        for layer in report["layers"]
    ]
    headers = ["layer", "method", "ranks", "params", "params after", "MACs", "MACs after"]
    print(markdown_table(headers, layer_rows))
    print("\nPhases:\n")
    phase_rows = [
        [
            name,
            f"{p['seconds']:.1f}",
            "-" if p["peak_gib"] is None else f"{p['peak_gib']:.2f}",
        ]
        for name, p in result["phases"].items()
    ]
    print(markdown_table(["phase", "wall s", "peak GPU memory GiB"], phase_rows))


def print_summary(results: list[dict[str, Any]]) -> None:
    print("\n## Against the published anchors\n")
    rows = []
    for result in results:
        goal = result["anchor"]
        anchor = "-" if goal["anchor"] is None else f"{goal['anchor']:g}x"
        rows.append(
            [
                result["arch"],
                result["data"]["name"],
                anchor,
                f"{goal['ratio']:.2f}x",
                f"{goal['drop']:.2f}",
                "yes" if goal["comparable"] else "NO",
                goal["status"],
            ]
        )
    headers = ["arch", "data", "anchor", "ours (params)", "drop (pt)", "comparable", "status"]
    print(markdown_table(headers, rows))
    if any(not r["data"]["is_cifar10"] for r in results):
        print(
            "\nNOT CIFAR-10: the rows marked N/A ran on mnist5k upsampled; they show the pipeline "
            "works, not how rankopt compares with the anchors."
        )


# ------------------------------------------------------------------------------------- main


def output_stem(arch: str, data_name: str, smoke: bool) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{arch}_{data_name}").strip("_")
    return f"gpu_vgg_{slug}" + ("_smoke" if smoke else "")


def bench_arch(
    arch: str,
    data: Data,
    args: argparse.Namespace,
    device: torch.device,
    log: Callable[[str], None],
) -> dict[str, Any]:
    budget = make_budget(args, is_cifar10=data.is_cifar10)
    bundle = cap(data.bundle, max_train=budget.max_train, max_val=budget.max_val, seed=args.seed)
    stem = output_stem(arch, bundle.name, args.smoke)
    run_dir = Path(args.out) / stem
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = Recipe(
        epochs=budget.train_epochs,
        lr=budget.train_lr,
        batch_size=128 if not args.smoke else budget.batch_size,
        flip=data.is_cifar10,
        amp=args.amp,
    )
    clock = PhaseClock(device)
    started = time.perf_counter()
    eval_every = max(1, budget.train_epochs // 20)
    with clock.phase("train from scratch (or reload a saved baseline)"):
        model, record = baseline_model(
            arch,
            replace(data, bundle=bundle),
            recipe,
            run_dir,
            device=device,
            seed=args.seed,
            retrain=args.retrain or args.smoke,
            eval_every=eval_every,
            log=log,
        )
    log(f"baseline {100 * record.accuracy:.2f}%; searching ({budget.trials} trials) ...")
    config = search_config(args, budget, device)
    storage_kind = args.storage or ("memory" if args.smoke else "sqlite")
    report, where = run_search(
        model,
        bundle,
        config,
        run_dir,
        arch=arch,
        storage_kind=storage_kind,
        clock=clock,
        log=log,
    )
    trials = report["trials"]
    feasible = [
        t
        for t in trials
        if t["state"] == "COMPLETE"
        and t["accuracy_drop"] is not None
        and t["accuracy_drop"] <= args.max_drop
    ]
    result: dict[str, Any] = {
        "arch": arch,
        "data": {
            "name": bundle.name,
            "is_cifar10": data.is_cifar10,
            "description": data.description,
            "fallback_reason": data.fallback_reason,
            "train": len(bundle.y_train),
            "val": len(bundle.y_val),
            "input_shape": list(bundle.input_shape),
        },
        "smoke": args.smoke,
        "budget": asdict(budget),
        "train": {
            "recipe": asdict(recipe),
            "augmentation": "random crop (pad 4) + horizontal flip"
            if recipe.flip
            else "random crop (pad 4), no flip",
            "epochs": recipe.epochs,
            "accuracy": record.accuracy,
            "seconds": record.seconds,
            "reused": record.reused,
            "history": record.history,
        },
        "full_accuracy": full_accuracy_check(arch, report["baseline"]["accuracy"], data.is_cifar10),
        "search": config.to_dict(),
        "study": where,
        "trials_complete": sum(1 for t in trials if t["state"] == "COMPLETE"),
        "trials_finished": sum(1 for t in trials if t["state"] in ("COMPLETE", "PRUNED", "FAIL")),
        "trials_feasible": len(feasible),
        "phases": clock.phases,
        "total_seconds": time.perf_counter() - started,
        "anchor": anchor_goal(arch, report, data.is_cifar10),
        "outputs": str(run_dir),
        "report": report,
    }
    if device.type == "cuda":
        result["max_memory_allocated_gib"] = max(
            p["peak_gib"] or 0.0 for p in clock.phases.values()
        )
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cifar-root", default=None, help="CIFAR-10 in torchvision's format")
    parser.add_argument(
        "--require-cifar", action="store_true", help="fail instead of falling back to mnist5k"
    )
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), help="zoo names, run in turn")
    parser.add_argument("--device", default="auto", help="auto (default), cuda, cuda:<i> or cpu")
    parser.add_argument("--train-epochs", type=int, default=None, help="160 on CIFAR-10")
    parser.add_argument("--train-lr", type=float, default=None, help="one-cycle peak (0.1)")
    parser.add_argument("--trials", type=int, default=None, help="search trials (60)")
    parser.add_argument("--epochs-per-trial", type=int, default=None, help="(3)")
    parser.add_argument("--final-epochs", type=int, default=None, help="(30)")
    parser.add_argument("--batch-size", type=int, default=None, help="search batch size (128)")
    parser.add_argument("--max-drop", type=float, default=1.0, help="allowed drop in points")
    parser.add_argument("--methods", nargs="+", default=None, help="search methods (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument(
        "--storage",
        choices=("sqlite", "memory"),
        default=None,
        help="study storage: sqlite under the run folder (default; resumable) or memory "
        "(default with --smoke)",
    )
    parser.add_argument("--retrain", action="store_true", help="ignore a saved baseline")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="float32 training")
    parser.add_argument("--max-train", type=int, default=None, help="cap the training split")
    parser.add_argument("--max-val", type=int, default=None, help="cap the validation split")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets: a CPU smoke test")
    parser.add_argument("--verbose", action="store_true", help="log the search at INFO")
    args = parser.parse_args(argv)
    for name in ("train_epochs", "trials", "epochs_per_trial", "batch_size", "max_train"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.final_epochs is not None and args.final_epochs < 0:
        parser.error("--final-epochs must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif args.smoke:
        torch.set_num_threads(1)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    configure_device(device)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    data = load_data(args)
    dev = device_info(device)
    vers = {
        **versions(),
        "torchvision": _version("torchvision"),
        "optuna": optuna.__version__,
        "platform": platform.platform(),
    }
    print(
        "# rankopt GPU run: "
        + ", ".join(args.arch)
        + f" on {data.bundle.name}"
        + (" (--smoke)" if args.smoke else "")
    )
    announce_fallback(data)
    print_header(dev, vers)
    sys.stdout.flush()
    results = []
    for arch in args.arch:
        log(f"{arch}: training from scratch on {data.bundle.name} ({dev['name']}) ...")
        result = bench_arch(arch, data, args, device, log)
        result.update({"device": dev, "versions": vers, "command": sys.argv})
        print_arch(result)
        sys.stdout.flush()
        out = Path(args.out) / f"{output_stem(arch, result['data']['name'], args.smoke)}.json"
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        log(f"{arch}: results written to {out} and {result['outputs']}/")
        results.append(result)
    print_summary(results)
    if args.smoke:
        print(
            "\n--smoke: tiny budgets (400 training images, 1 epoch, 2 trials): a test that the "
            "pipeline runs end to end, not evidence about accuracy or compression."
        )
    return 0


def _version(package: str) -> str:
    try:
        module = __import__(package)
    except ImportError:
        return "not installed"
    return str(getattr(module, "__version__", "unknown"))


if __name__ == "__main__":
    raise SystemExit(main())
