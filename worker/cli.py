"""The ``rankopt`` command line: ``train`` a starting model, ``compress`` it by rank search.

Bad arguments print one clear line (exit 2), never a traceback: every
:class:`~worker.errors.WorkerError` is translated once, in :func:`main`, which prints its message
and, unless it is a plain usage error, its ``code``. Ctrl-C stops a search cleanly and the same
command resumes it. ``compress``'s search options are generated from the job options model
(:mod:`worker.cli_options`).
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

from service.cli.usage import UsageError as ServiceUsageError
from service.job_options import DEFAULTS
from worker.cli_options import add_option_arguments, options_from_args
from worker.errors import UsageError, WorkerError

#: The job options that say how the data is opened, which ``rankopt train`` takes too.
DATA_OPTIONS = ("image_size", "preprocess")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Modules that add subcommands: each has ``register(subparsers)`` and sets a ``handler``
# default (a function of the parsed args returning the exit status) on its parsers.
# The service's commands (``serve``, ``keys``, ``db``, the client) live in ``service.cli``, imported
# here by name only: it is torch-free and imports ``service.api`` only when ``serve`` runs.
COMMAND_MODULES: tuple[str, ...] = ("worker.cli_pool", "service.cli")

DATASET_HELP = (
    "digits, mnist5k, fashion-mnist, breast-cancer, breast-cancer-seq, a .npz/.safetensors file "
    "with x_train,y_train,x_val,y_val (optionally x_test,y_test), folder:PATH or cifar10:PATH"
)
SPLIT_SEED_HELP = (
    "seed of the train/val/test split (default: %(default)s); it belongs to the data, not the "
    "search: compress with the one the model was trained with"
)


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
        help=DATASET_HELP,
    )
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--lr", type=float, default=0.01)
    train.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument(
        "--seed", type=int, default=0, help="seed of the initial weights and batches"
    )
    train.add_argument("--split-seed", type=int, default=DEFAULTS.split_seed, help=SPLIT_SEED_HELP)
    add_option_arguments(train, only=DATA_OPTIONS, title="data options (as compress's)")
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
    comp.add_argument("--dataset", required=True, help=DATASET_HELP)
    comp.add_argument(
        "--out",
        required=True,
        help="output directory (checkpoint, report.json, pareto.png, study.db)",
    )
    add_option_arguments(comp)
    comp.add_argument("--device", default="auto")
    comp.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: sqlite file in --out)"
    )
    comp.add_argument("--study-name", default="job-local")
    comp.add_argument("--data-root", action="append", default=[])
    comp.add_argument("--num-classes", type=int, default=None, help="default: the dataset's")
    comp.add_argument(
        "--strict-split",
        action="store_true",
        help="refuse (code split_mismatch) instead of warning when the weights record another "
        "dataset or --split-seed than the search's",
    )
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _data(args: argparse.Namespace, split_seed: int, image_size: int, preprocess: str) -> Any:
    """The dataset of ``args`` as streamed :class:`~worker.data.DataSplits` (an image folder is
    read batch by batch, never decoded whole), split by ``split_seed`` (the data's seed, never
    the search's); folders are resized to ``image_size`` with ``preprocess``."""
    from worker.data import DatasetError, open_dataset

    if split_seed < 0:
        raise UsageError(f"--split-seed must be >= 0, got {split_seed}")
    if image_size < 1:
        raise UsageError(f"--image-size must be >= 1, got {image_size}")
    try:
        return open_dataset(
            args.dataset,
            split_seed=split_seed,
            allowed_roots=[Path(p) for p in args.data_root],
            image_size=image_size,
            preprocess=preprocess,
        )
    except DatasetError as exc:
        raise UsageError(f"dataset: {exc}", code=exc.code) from None


def _model(arch: str, num_classes: int, in_channels: int) -> Any:
    from worker.zoo import ZooError, get_model

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if arch.startswith("rankopt:"):
        kwargs["in_channels"] = in_channels
    try:
        return get_model(arch, **kwargs), kwargs
    except ZooError as exc:
        raise UsageError(f"arch: {exc}", code=exc.code) from None


def _check_input(model: Any, data: Any, arch: str) -> None:
    """Refuse (code ``input_shape_mismatch``) data whose examples ``model`` cannot take, e.g.
    an image folder at another ``--image-size`` than the architecture's."""
    from worker.training import check_model_input
    from worker.zoo import documented_input

    check_model_input(model, data, expected=documented_input(arch))


def cmd_train(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from worker.split_record import DataRecord, reads_images
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
    data = _data(args, args.split_seed, args.image_size, args.preprocess)
    torch.manual_seed(args.seed)  # --seed fixes the initial weights too, not just the batches
    model, _ = _model(args.arch, data.num_classes, data.input_shape[0])
    _check_input(model, data, args.arch)
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
    image = reads_images(args.dataset)  # how the images were read belongs to the model too
    record = DataRecord(
        dataset=args.dataset,
        split_seed=data.split_seed,
        name=data.name,
        image_size=args.image_size if image else None,
        preprocess=args.preprocess if image else None,
    )
    save_file(state, str(out), metadata=record.to_metadata())
    print(
        f"trained {args.arch} on {data.name}: val accuracy {result.final_val_accuracy:.4f} → {out}"
    )
    return 0


def _config(args: argparse.Namespace) -> Any:
    """The search config of ``rankopt compress``'s arguments (options, then device)."""
    from worker.errors import InvalidOptions
    from worker.search import search_config

    options = options_from_args(args)
    try:
        return search_config(options, device=args.device)
    except InvalidOptions as exc:
        raise UsageError(str(exc), code=exc.code) from None


def cmd_compress(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from worker.search import Progress as SearchProgress
    from worker.search import run_search
    from worker.split_record import check_split, read_record
    from worker.training import resolve_device
    from worker.weights import WeightsError, load_weights, read_state_dict

    config = _config(args)
    try:
        resolve_device(args.device)
    except ValueError as exc:
        raise UsageError(f"--device: {exc}") from None
    check_split(
        read_record(args.weights),
        args.dataset,
        config.split_seed,
        strict=args.strict_split,
        image_size=config.image_size,
        preprocess=config.preprocess,
    )
    data = _data(args, config.split_seed, config.image_size, config.preprocess)
    num_classes = args.num_classes or data.num_classes
    model, kwargs = _model(args.arch, num_classes, data.input_shape[0])
    try:
        load_weights(model, read_state_dict(args.weights))
    except WeightsError as exc:
        raise UsageError(f"weights: {exc}", code=exc.code) from None
    _check_input(model, data, args.arch)
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
                "baseline_test_accuracy": report["baseline"]["test_accuracy"],
                "final_test_accuracy": final["test_accuracy"],
                "test_accuracy_drop": final["test_accuracy_drop"],
                "test_constraint_met": final["test_constraint_met"],
                "test_note": report["test_note"],
                "params_ratio": report["ratios"]["params"],
                "macs_ratio": report["ratios"]["macs"],
                "latency_ratio": final["latency_ratio"],
                "latency_constraint_met": final["latency_constraint_met"],
                "kept_original_reason": report["kept_original_reason"],
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
    except (WorkerError, ServiceUsageError) as exc:  # the CLI's one translation of errors
        code = "" if exc.code == UsageError.code else f" [{exc.code}]"
        print(f"rankopt {args.command}: error: {exc}{code}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
