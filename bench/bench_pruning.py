"""Norm-based structured pruning of LeNet-500-300 and LeNet-5 (fully connected layers) on mnist5k.

Usage::

    .venv/bin/python bench/bench_pruning.py [--seeds 0 1] [--train-epochs 20] [--l1-epochs 30]
        [--ft-epochs 20] [--penalty L] [--threshold 0.01] [--distill 0.5] [--threads 1]
        [--models lenet500_300 lenet5] [--out bench/results]

For each model and seed: train the dense network on mnist5k (4,000 train / 1,000 validation
digits), rebuild its planned layers as ``prune`` layers (each unit ``g * v / ||v||``, an exact
copy), train with an L1 penalty on the unit norms ``g`` (``finetune(penalty_weight=...)``),
remove units with ``|g| <= threshold`` and the next layers' matching inputs
(``tensorops.prune_channels``), fine-tune without the penalty, and evaluate. The final fine-tune
can distil from the dense network (``--distill``, weight of the soft targets; default 0).
Parameters are measured with ``tensorops.measure_cost`` on the models themselves (the pruned
counts include the norms ``g``, one per kept unit). Errors are on the validation split.

The published anchors (L1 norm-based sparsification) are 85.4% of LeNet-500-300's parameters
removed for +0.09 points of error, and 82.2% of LeNet-5's (fully connected layers only) with no
error increase; those were measured on the full MNIST (60,000 training digits), this runs on
4,000. Prints a markdown table and writes ``pruning.json`` and ``pruning.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from _common import machine_info, markdown_table, versions
from torch import nn

import tensorops as to
from worker.data import DataBundle, load_mnist5k
from worker.training import ScheduleConfig, evaluate, finetune, predict_logits, train
from worker.zoo import get_model


@dataclass(frozen=True)
class Setup:
    """What is pruned in one model, and the penalty strength that suits it."""

    arch: str
    layers: tuple[str, ...]  # the layers trained with the L1 penalty
    fc_layers: tuple[str, ...]  # every fully connected layer, for the FC-only share
    penalty: float
    anchor_removed: float  # published share of parameters removed, %
    anchor_error_delta: float  # published error change, points


SETUPS = {
    "lenet500_300": Setup(
        "rankopt:lenet500_300",
        ("classifier.0", "classifier.2"),
        ("classifier.0", "classifier.2", "classifier.4"),
        penalty=5e-3,
        anchor_removed=85.4,
        anchor_error_delta=0.09,
    ),
    "lenet5": Setup(
        "rankopt:lenet5",
        ("classifier.0", "classifier.2"),
        ("classifier.0", "classifier.2", "classifier.4"),
        penalty=2e-2,
        anchor_removed=82.2,
        anchor_error_delta=0.0,
    ),
}


@dataclass(frozen=True)
class Run:
    model: str
    seed: int
    penalty: float
    threshold: float
    distill: float
    params_dense: int
    params_pruned: int
    removed_pct: float
    fc_params_dense: int
    fc_params_pruned: int
    fc_removed_pct: float
    error_dense: float  # %
    error_l1: float  # after L1 training, before thresholding
    error_thresholded: float  # right after removing units
    error_pruned: float  # after the final fine-tune
    error_delta: float  # points, pruned - dense
    widths: dict[str, list[int]]  # layer -> [kept_out, out, kept_in, in]
    kept_width: dict[str, str]
    seconds: float


def _fc_params(model: nn.Module, names: tuple[str, ...]) -> int:
    return sum(p.numel() for name in names for p in model.get_submodule(name).parameters())


def _error(model: nn.Module, data: DataBundle) -> float:
    return 100.0 * (1.0 - evaluate(model, (data.x_val, data.y_val), device="cpu").accuracy)


def _cosine(lr: float, epochs: int) -> ScheduleConfig:
    return ScheduleConfig(kind="cosine_restarts", base_lr=lr * 1e-2, max_lr=lr, cycle_epochs=epochs)


def run_one(name: str, setup: Setup, data: DataBundle, seed: int, args: argparse.Namespace) -> Run:
    started = time.perf_counter()
    torch.manual_seed(seed)
    dense = get_model(setup.arch)
    train(dense, data, epochs=args.train_epochs, lr=args.lr, seed=seed, device="cpu")
    example = data.x_val[:1]
    penalty = args.penalty if args.penalty is not None else setup.penalty
    plan = to.Plan(
        {
            layer: to.Choice("prune", to.get_method("prune").max_ranks(dense.get_submodule(layer)))
            for layer in setup.layers
        }
    )
    model = to.compress(dense, plan)
    # With --distill the final fine-tune distils from the dense network (finetune's
    # teacher_logits). The L1 phase always trains on labels only: soft targets resist pruning.
    # Off by default: on LeNet-5 at T=4 the 8x larger soft-target gradient (a*T^2) made the
    # fine-tune of the 18-unit network collapse to chance.
    teacher = predict_logits(dense, data.x_train, device="cpu")
    distill = {
        "teacher_logits": teacher if args.distill > 0 else None,
        "distill_weight": args.distill,
        "temperature": args.temperature,
    }
    finetune(
        model,
        data,
        _cosine(args.lr, args.l1_epochs),
        epochs=args.l1_epochs,
        weight_decay=0.0,
        penalty_weight=penalty,
        seed=seed,
        device="cpu",
    )
    error_l1 = _error(model, data)
    result = to.prune_channels(model, plan, threshold=args.threshold)
    pruned = result.model
    error_thresholded = _error(pruned, data)
    finetune(
        pruned,
        data,
        _cosine(args.lr / 2, args.ft_epochs),
        epochs=args.ft_epochs,
        seed=seed,
        device="cpu",
        **distill,
    )
    dense_cost = to.measure_cost(dense, example)
    pruned_cost = to.measure_cost(pruned, example)
    fc_dense = _fc_params(dense, setup.fc_layers)
    fc_pruned = _fc_params(pruned, setup.fc_layers)
    error_dense, error_pruned = _error(dense, data), _error(pruned, data)
    return Run(
        model=name,
        seed=seed,
        penalty=penalty,
        threshold=args.threshold,
        distill=args.distill,
        params_dense=dense_cost.params,
        params_pruned=pruned_cost.params,
        removed_pct=100.0 * (1 - pruned_cost.params / dense_cost.params),
        fc_params_dense=fc_dense,
        fc_params_pruned=fc_pruned,
        fc_removed_pct=100.0 * (1 - fc_pruned / fc_dense),
        error_dense=error_dense,
        error_l1=error_l1,
        error_thresholded=error_thresholded,
        error_pruned=error_pruned,
        error_delta=error_pruned - error_dense,
        widths={
            r.name: [r.kept_out, r.out_features, r.kept_in, r.in_features] for r in result.layers
        },
        kept_width=result.kept_width,
        seconds=time.perf_counter() - started,
    )


def _table(runs: list[Run]) -> str:
    rows = []
    for r in runs:
        anchor = SETUPS[r.model]
        widths = ", ".join(f"{k}: {w[0]}/{w[1]}" for k, w in r.widths.items() if w[0] != w[1])
        rows.append(
            [
                r.model,
                r.seed,
                f"{r.params_dense:,} → {r.params_pruned:,}",
                f"{r.removed_pct:.1f}% (FC {r.fc_removed_pct:.1f}%)",
                f"{anchor.anchor_removed:.1f}%",
                f"{r.error_dense:.2f} → {r.error_pruned:.2f} ({r.error_delta:+.2f})",
                f"{anchor.anchor_error_delta:+.2f}",
                f"{r.error_thresholded:.2f}",
                widths,
                f"{r.seconds:.0f}",
            ]
        )
    headers = [
        "model",
        "seed",
        "params",
        "removed",
        "anchor removed",
        "val error % (Δ points)",
        "anchor Δ",
        "error before FT",
        "units kept",
        "s",
    ]
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--models", nargs="+", choices=sorted(SETUPS), default=sorted(SETUPS))
    parser.add_argument("--train-epochs", type=int, default=20)
    parser.add_argument("--l1-epochs", type=int, default=30)
    parser.add_argument("--ft-epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--penalty", type=float, default=None, help="override every model's")
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument("--distill", type=float, default=0.0, help="e.g. 0.5; 0: labels only")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs: list[Run] = []
    for seed in args.seeds:
        data = load_mnist5k(seed=seed)
        for name in args.models:
            runs.append(run_one(name, SETUPS[name], data, seed, args))
            print(f"done {name} seed {seed} in {runs[-1].seconds:.0f}s", file=sys.stderr)
    print(_table(runs))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "command": " ".join(["bench/bench_pruning.py", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "versions": versions(),
        "anchors": {k: asdict(v) for k, v in SETUPS.items()},
        "runs": [asdict(r) for r in runs],
    }
    (out / "pruning.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "pruning.md").write_text(_table(runs) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
