"""The ``rankopt`` command line: ``train`` a starting model, ``compress`` it by rank search.

Bad arguments print one clear line (exit 2), never a traceback; Ctrl-C stops a search cleanly
and the same command resumes it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from service.cli.usage import UsageError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Modules that add subcommands: each has ``register(subparsers)`` and sets a ``handler``
# default (a function of the parsed args returning the exit status) on its parsers.
# The service's commands (``serve``, ``keys``, ``db``, the client) live in ``service.cli``, imported
# here by name only: it is torch-free and imports ``service.api`` only when ``serve`` runs.
COMMAND_MODULES: tuple[str, ...] = ("worker.cli_pool", "service.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rankopt",
        description="Compress trained CNNs by tensor decomposition with automatic rank search.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a starting model (no pretrained weights needed)")
    train.add_argument("--arch", required=True, help="e.g. rankopt:lenet5, torchvision:resnet18")
    train.add_argument(
        "--dataset",
        required=True,
        help="digits, mnist5k, a .npz/.safetensors file, folder:PATH or cifar10:PATH",
    )
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--lr", type=float, default=0.01)
    train.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto")
    train.add_argument(
        "--data-root",
        action="append",
        default=[],
        help="allowed root for folder:/cifar10: data (repeatable)",
    )
    train.add_argument("--out", required=True, help="where to write the weights (.safetensors)")

    comp = sub.add_parser(
        "compress",
        help="search per-layer methods and ranks, write the smallest model within tolerance",
    )
    comp.add_argument("--arch", required=True)
    comp.add_argument(
        "--weights",
        required=True,
        help=".safetensors or a PyTorch state_dict (read with weights_only=True)",
    )
    comp.add_argument("--dataset", required=True)
    comp.add_argument(
        "--out",
        required=True,
        help="output directory (checkpoint, report.json, pareto.png, study.db)",
    )
    comp.add_argument("--trials", type=int, default=40)
    comp.add_argument("--timeout", type=float, default=None, help="wall-clock budget in seconds")
    comp.add_argument("--max-accuracy-drop", type=float, default=1.0, help="in accuracy points")
    comp.add_argument("--objective", choices=("params", "macs", "latency"), default="params")
    comp.add_argument(
        "--pareto", action="store_true", help="two-objective search (accuracy, compression)"
    )
    comp.add_argument("--sampler", choices=("tpe", "gp", "random"), default="tpe")
    comp.add_argument(
        "--pruner",
        choices=("feasibility", "median", "halving", "none"),
        default="feasibility",
        help="stop trials early: feasibility (only those that cannot meet the tolerance), "
        "median, halving, none",
    )
    comp.add_argument(
        "--no-seeding", action="store_true", help="do not enqueue the EVBMF plans first"
    )
    comp.add_argument(
        "--methods",
        default=None,
        help="comma-separated per-layer choices (default tucker2,cp,svd; the opt-in families "
        "tt, qtt, qcp, ntt, btd, tt_conv, tt_tucker and prune join only when named)",
    )
    comp.add_argument("--rank-scale", default="0.1,4.0", help="LOW,HIGH multiplier of EVBMF ranks")
    comp.add_argument(
        "--latency-batch",
        type=int,
        default=1,
        help="batch size the latency objective times (default 1)",
    )
    comp.add_argument(
        "--push-factor",
        type=float,
        default=0.7,
        help="after each new best trial, try its plan with ranks times this (0: never)",
    )
    comp.add_argument(
        "--lr-scales",
        default="1,0.3,0.1",
        help="multipliers of the schedule's rates tried on the EVBMF plan before the search; "
        "the best is used throughout (one value: no calibration; default 1,0.3,0.1)",
    )
    comp.add_argument(
        "--rank-multiple",
        type=int,
        default=1,
        help="round ranks to a multiple (8 for tensor cores)",
    )
    comp.add_argument("--epochs-per-trial", type=int, default=3)
    comp.add_argument("--final-epochs", type=int, default=10)
    comp.add_argument(
        "--distill",
        type=float,
        default=0.5,
        help="weight of distillation from the original model in the fine-tuning loss (0: off)",
    )
    comp.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
    comp.add_argument(
        "--verify-top",
        type=int,
        default=3,
        help="candidates fine-tuned for --final-epochs before choosing (if all miss, the most "
        "accurate compressed trial within the tolerance is tried last)",
    )
    comp.add_argument(
        "--verify-slack",
        type=float,
        default=0.5,
        help="points above the tolerance a trial may be and still be verified",
    )
    comp.add_argument(
        "--schedule",
        choices=("triangular", "triangular2", "exp_range", "cosine_restarts", "constant"),
        default="triangular2",
    )
    comp.add_argument("--max-lr", type=float, default=0.01)
    comp.add_argument("--base-lr", type=float, default=1e-4)
    comp.add_argument("--cycle-epochs", type=float, default=1.0)
    comp.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw")
    comp.add_argument("--batch-size", type=int, default=64)
    comp.add_argument("--seed", type=int, default=0)
    comp.add_argument("--device", default="auto")
    comp.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: sqlite file in --out)"
    )
    comp.add_argument("--study-name", default="job-local")
    comp.add_argument("--data-root", action="append", default=[])
    comp.add_argument("--num-classes", type=int, default=None, help="default: the dataset's")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _data(args: argparse.Namespace) -> Any:
    from worker.data import DatasetError, load_dataset

    try:
        return load_dataset(
            args.dataset, seed=args.seed, allowed_roots=[Path(p) for p in args.data_root]
        )
    except DatasetError as exc:
        raise UsageError(f"dataset: {exc}") from None


def _model(arch: str, num_classes: int, in_channels: int) -> Any:
    from worker.zoo import ZooError, get_model

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if arch.startswith("rankopt:"):
        kwargs["in_channels"] = in_channels
    try:
        return get_model(arch, **kwargs), kwargs
    except ZooError as exc:
        raise UsageError(f"arch: {exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from worker.training import resolve_device, train

    if args.epochs < 1:
        raise UsageError("--epochs must be >= 1")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        resolve_device(args.device)
    except ValueError as exc:
        raise UsageError(f"--device: {exc}") from None
    data = _data(args)
    torch.manual_seed(args.seed)  # --seed fixes the initial weights too, not just the batches
    model, _ = _model(args.arch, data.num_classes, data.input_shape[0])
    result = train(
        model,
        data,
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
    )
    if result.status == "diverged":
        raise UsageError(f"training diverged: {result.message}; try a lower --lr")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out))
    print(
        f"trained {args.arch} on {data.name}: val accuracy {result.final_val_accuracy:.4f} → {out}"
    )
    return 0


def _config(args: argparse.Namespace) -> Any:
    from worker.search import SearchConfig
    from worker.training import ScheduleConfig

    try:
        low, high = (float(v) for v in args.rank_scale.split(","))
    except ValueError:
        raise UsageError(f"--rank-scale must be LOW,HIGH, got {args.rank_scale!r}") from None
    try:
        lr_scales = tuple(float(v) for v in args.lr_scales.split(",") if v.strip())
    except ValueError:
        raise UsageError(
            f"--lr-scales must be numbers like 1,0.3,0.1, got {args.lr_scales!r}"
        ) from None
    methods = None
    if args.methods:
        from tensorops import list_methods

        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = sorted(set(methods) - set(list_methods()))
        if unknown:
            raise UsageError(f"--methods: unknown {unknown}; registered: {list_methods()}")
    try:
        schedule = ScheduleConfig(
            kind=args.schedule,
            base_lr=args.base_lr if args.schedule != "constant" else args.max_lr,
            max_lr=args.max_lr,
            cycle_epochs=args.cycle_epochs,
        )
        return SearchConfig(
            trials=args.trials,
            timeout_s=args.timeout,
            max_accuracy_drop=args.max_accuracy_drop,
            objective=args.objective,
            pareto=args.pareto,
            sampler=args.sampler,
            pruner=args.pruner,
            seed=args.seed,
            seeding=not args.no_seeding,
            methods=methods,
            rank_scale=(low, high),
            rank_multiple=args.rank_multiple,
            latency_batch_size=args.latency_batch,
            lr_scales=lr_scales,
            push_factor=args.push_factor or None,
            epochs_per_trial=args.epochs_per_trial,
            final_epochs=args.final_epochs,
            distill_weight=args.distill,
            temperature=args.temperature,
            verify_top=args.verify_top,
            verify_slack=args.verify_slack,
            schedule=schedule,
            optimizer=args.optimizer,
            batch_size=args.batch_size,
            device=args.device,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_compress(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from worker.search import Progress as SearchProgress
    from worker.search import run_search
    from worker.training import resolve_device
    from worker.weights import WeightsError, load_weights, read_state_dict

    config = _config(args)
    try:
        resolve_device(args.device)
    except ValueError as exc:
        raise UsageError(f"--device: {exc}") from None
    data = _data(args)
    num_classes = args.num_classes or data.num_classes
    model, kwargs = _model(args.arch, num_classes, data.input_shape[0])
    try:
        load_weights(model, read_state_dict(args.weights))
    except WeightsError as exc:
        raise UsageError(f"weights: {exc}") from None
    stop = {"requested": False}

    def on_sigint(_sig: int, _frame: FrameType | None) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    columns = (
        TextColumn("[bold]trial {task.completed:.0f}/{task.total:.0f}"),
        BarColumn(),
        TextColumn("{task.fields[best]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task("search", total=config.trials, best="preparing…", eta="?")

            def on_progress(p: SearchProgress) -> None:
                best = (
                    f"best {p.best_compression:.2f}x at {100 * (p.best_accuracy or 0):.2f}%"
                    if p.best_compression is not None
                    else "no feasible plan yet"
                )
                eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "-"
                bar.update(task, completed=p.done, best=best, eta=eta)

            result = run_search(
                model,
                data,
                config,
                args.out,
                arch={"arch": args.arch, "kwargs": kwargs},
                storage=args.storage,
                study_name=args.study_name,
                on_progress=on_progress,
                should_stop=lambda: stop["requested"],
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    if result is None:
        print("stopped; run the same command again to resume the search", file=sys.stderr)
        return EXIT_INTERRUPTED
    report = result.report
    final = report["final"]
    print(
        json.dumps(
            {
                "baseline_accuracy": report["baseline"]["accuracy"],
                "final_accuracy": final["accuracy"],
                "accuracy_drop": final["accuracy_drop"],
                "params_ratio": report["ratios"]["params"],
                "macs_ratio": report["ratios"]["macs"],
                "checkpoint": str(result.checkpoint),
            },
            indent=2,
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args))
        if args.command == "train":
            return cmd_train(args)
        return cmd_compress(args)
    except UsageError as exc:
        print(f"rankopt {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
