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
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from _common import machine_info, versions
from _gpu_vgg_report import (
    anchor_goal,
    full_accuracy_check,
    print_arch,
    print_header,
    print_summary,
)
from _gpu_vgg_train import (
    Budget,
    Data,
    Recipe,
    announce_fallback,
    baseline_model,
    cap,
    load_data,
    make_budget,
    state_digest,
)
from torch import nn

from worker.data import DataBundle
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
from worker.training import resolve_device

ARCHS = ("rankopt:vgg11_bn", "rankopt:vgg16_bn")


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
