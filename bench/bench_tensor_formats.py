"""QTT against QCP (and TT against SVD) at equal parameter budgets on real trained weights.

Usage::

    .venv/bin/python bench/bench_tensor_formats.py [--quick] [--layer 2] [--epochs 3]
        [--budgets 0.02,0.05,0.1,0.25] [--out bench/results]

Trains ``rankopt:lenet500_300`` (784-500-300-10 MLP) on ``mnist5k`` for a few epochs (seed 0,
Adam), then replaces one Linear (``classifier[layer]``; default 2, the 500x300 one) by each
format at several parameter budgets (a fraction of the dense weight's parameters). For every
format the largest rank whose factor parameters fit the budget is taken: QTT and TT by their
maximal TT rank, QCP by its CP rank, SVD by its rank. Reported per format and budget: factor
parameters, relative Frobenius error of the weight, validation accuracy of the whole model with
that one layer replaced and no fine-tuning, and the decomposition time. ``--quick`` uses one
epoch and two budgets. Prints markdown tables and writes ``tensor_formats.json`` (or
``tensor_formats_quick.json``) under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import fmt_seconds, machine_info, markdown_table, versions
from torch import nn

from tensorops.decompositions import relative_error
from tensorops.layers import LowRankLinear, QCPLinear, QTTLinear, TTLinear
from tensorops.layers._qcp_linear import qcp_max_rank
from worker.data import load_mnist5k
from worker.zoo import get_model


def factor_params(layer: nn.Module) -> int:
    """Parameters of the factors only (the bias is the same for every format)."""
    return sum(p.numel() for name, p in layer.named_parameters() if not name.endswith("bias"))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def weight_of(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, (TTLinear, QCPLinear)):
        return layer.weight_matrix()
    assert isinstance(layer, LowRankLinear)
    return layer.last.weight @ layer.first.weight


Builder = Callable[[nn.Linear, int], nn.Module]
Skeleton = Callable[[nn.Linear, int], nn.Module]

FORMATS: dict[str, tuple[Builder, Skeleton, Callable[[nn.Linear], int]]] = {
    "qtt": (
        lambda lin, r: QTTLinear.from_linear(lin, r),
        lambda lin, r: QTTLinear.skeleton(lin, r),
        lambda lin: max(QTTLinear.skeleton(lin).ranks),
    ),
    "qcp": (
        lambda lin, r: QCPLinear.from_linear(lin, r),
        lambda lin, r: QCPLinear.skeleton(lin, r),
        lambda lin: qcp_max_rank(lin.out_features, lin.in_features),
    ),
    "tt": (
        lambda lin, r: TTLinear.from_linear(lin, ranks=r),
        lambda lin, r: TTLinear.skeleton(lin, r),
        lambda lin: max(TTLinear.skeleton(lin).ranks),
    ),
    "svd": (
        lambda lin, r: LowRankLinear.from_linear(lin, r),
        lambda lin, r: LowRankLinear.skeleton(lin, r),
        lambda lin: min(lin.in_features, lin.out_features),
    ),
}


def largest_rank_within(skeleton: Skeleton, linear: nn.Linear, top: int, budget: int) -> int:
    """Largest rank in [1, top] whose factor parameters are <= budget (1 if none fits)."""
    low, high = 1, top
    while low < high:  # parameters grow with the rank: bisect
        mid = (low + high + 1) // 2
        if factor_params(skeleton(linear, mid)) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--layer", type=int, default=2, help="index in the MLP's classifier")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--budgets", default="0.02,0.05,0.1,0.25")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    epochs = 1 if args.quick else args.epochs
    budgets = [0.02, 0.1] if args.quick else [float(b) for b in args.budgets.split(",")]
    torch.manual_seed(0)

    data = load_mnist5k(seed=0)
    x_train, x_val = data.x_train.flatten(1), data.x_val.flatten(1)
    flat = get_model("rankopt:lenet500_300").classifier  # the MLP on flattened images
    assert isinstance(flat, nn.Sequential)
    seconds_train, _ = _timed(lambda: train(flat, x_train, data.y_train, epochs))
    dense_accuracy = accuracy(flat, x_val, data.y_val)
    linear = flat[args.layer]
    if not isinstance(linear, nn.Linear):
        raise SystemExit(f"classifier[{args.layer}] is {type(linear).__name__}, not a Linear")
    dense_params = linear.weight.numel()

    rows: list[dict[str, Any]] = []
    for fraction in budgets:
        budget = int(fraction * dense_params)
        for name, (build, skeleton, top_of) in FORMATS.items():
            rank = largest_rank_within(skeleton, linear, top_of(linear), budget)
            seconds, layer = _timed(functools.partial(build, linear, rank))
            with torch.no_grad():
                error = relative_error(linear.weight, weight_of(layer))
            replaced = copy.deepcopy(flat)
            replaced[args.layer] = layer
            rows.append(
                {
                    "budget_fraction": fraction,
                    "format": name,
                    "rank": rank,
                    "params": factor_params(layer),
                    "relative_error": error,
                    "accuracy": accuracy(replaced, x_val, data.y_val),
                    "seconds": seconds,
                }
            )
            print(f"budget {fraction:g} {name} rank {rank} done", file=sys.stderr)

    result = {
        "machine": machine_info(),
        "versions": versions(),
        "model": "rankopt:lenet500_300 on mnist5k",
        "epochs": epochs,
        "train_seconds": seconds_train,
        "layer": f"classifier[{args.layer}] {tuple(linear.weight.shape)}",
        "dense_params": dense_params,
        "dense_accuracy": dense_accuracy,
        "rows": rows,
    }
    print(_report(result))
    out = Path(args.out)
    target = (
        out
        if out.suffix == ".json"
        else out / ("tensor_formats_quick.json" if args.quick else "tensor_formats.json")
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {target}")
    return 0


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _report(result: dict[str, Any]) -> str:
    machine, vers = result["machine"], result["versions"]
    lines = [
        "## Tensor formats on trained weights",
        "",
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch threads "
        f"{machine['torch_threads']}, load {machine['load_average_1_5_15']}",
        f"versions: torch {vers['torch']}, tensorops {vers['tensorops source sha256']}",
        f"model: {result['model']}, {result['epochs']} epoch(s) "
        f"({fmt_seconds(result['train_seconds'])}); layer {result['layer']}, "
        f"{result['dense_params']} weights; dense accuracy {result['dense_accuracy']:.4f}",
        "",
    ]
    table = [
        [
            f"{row['budget_fraction']:g}",
            row["format"],
            row["rank"],
            row["params"],
            f"{row['relative_error']:.4f}",
            f"{row['accuracy']:.4f}",
            fmt_seconds(row["seconds"]),
        ]
        for row in result["rows"]
    ]
    headers = ["budget", "format", "rank", "params", "rel. error", "accuracy", "time"]
    lines.append(markdown_table(headers, table))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
