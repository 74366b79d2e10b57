"""Convolution formats at equal parameter budgets: Tucker-2, CP, BTD, TT and TT-Tucker.

Usage::

    .venv/bin/python bench/bench_conv_formats.py [--arch rankopt:minivgg] [--epochs 3]
        [--budgets 0.5 0.25 0.1] [--seed 0] [--out bench/results]

Trains ``--arch`` (``rankopt:minivgg`` or ``rankopt:lenet5``) on ``mnist5k`` (AdamW, lr 0.003,
one learning-rate cycle) for ``--epochs``
epochs, then, for each budget ``f`` and each format, gives every eligible conv layer (kxk,
``in_channels >= 2``: the ones all five formats can take) the ranks whose closed-form parameter
count is the largest that stays within ``f`` times the layer's dense parameters, along one
rank path per format:

* ``tucker2``: ``(r_out, r_in)`` proportional to ``(out, in)``;
* ``cp``: the rank;
* ``btd``: 2 blocks of ``(r_out, r_in)`` proportional to ``(out, in)``;
* ``tt_conv``: the one TT rank cap;
* ``tt_tucker``: ``(r_out, r_in)`` proportional to ``(out, in)``, middle bond at half its
  largest useful value, ``t = ceil(min(r_in·kh, kw·r_out) / 2)``.

It reports the relative kernel error of every layer (the factorised layer's effective kernel is
read back through its forward on one-hot inputs, so the number checks the layer, not only the
decomposition) and the validation accuracy with all eligible layers replaced at once, without
fine-tuning. Prints a markdown table and writes ``conv_formats_<arch>.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from _common import machine_info, markdown_table, versions
from torch import nn

import tensorops
from tensorops import Choice, LayerInfo, Plan, compress, get_method
from worker.data import load_mnist5k
from worker.training import evaluate, train
from worker.zoo import get_model

FORMATS = ("tucker2", "cp", "btd", "tt_conv", "tt_tucker")
BTD_BLOCKS = 2


def rank_path(method: str, info: LayerInfo) -> Iterator[tuple[int, ...]]:
    """Ranks of ``method`` for ``info``, from small to large (see the module docstring)."""
    out_ch, in_ch = info.out_channels, info.in_channels
    kh, kw = info.kernel_size
    if method in ("cp", "tt_conv"):
        module = nn.Conv2d(in_ch, out_ch, info.kernel_size)
        yield from ((r,) for r in range(1, get_method(method).max_ranks(module)[0] + 1))
        return
    for r_out in range(1, out_ch + 1):
        r_in = min(in_ch, max(1, round(r_out * in_ch / out_ch)))
        if method == "tucker2":
            yield (r_out, r_in)
        elif method == "btd":
            yield (BTD_BLOCKS, r_out, r_in)
        elif method == "tt_tucker":
            yield (r_out, r_in, math.ceil(min(r_in * kh, kw * r_out) / 2))


def ranks_within(method: str, info: LayerInfo, budget: float) -> tuple[int, ...] | None:
    """The last ranks on the path whose parameters stay within ``budget``, or None."""
    best = None
    for ranks in rank_path(method, info):
        if get_method(method).cost(info, ranks).params <= budget:
            best = ranks
    return best


def effective_kernel(layer: nn.Module, info: LayerInfo) -> torch.Tensor:
    """The (out, in, kh, kw) kernel of a stride-1, 'same'-padded conv-like layer, read back by
    feeding one-hot (in, kh, kw) inputs and taking the centre output (bias subtracted)."""
    kh, kw = info.kernel_size
    n = info.in_channels * kh * kw
    probes = torch.eye(n).reshape(n, info.in_channels, kh, kw)
    with torch.no_grad():
        centre = layer(probes)[:, :, kh // 2, kw // 2]  # (n, out)
        bias = layer(torch.zeros(1, info.in_channels, kh, kw))[:, :, kh // 2, kw // 2]
    return (centre - bias).T.reshape(info.out_channels, info.in_channels, kh, kw)


def eligible(info: LayerInfo) -> bool:
    same_padding = info.padding == (info.kernel_size[0] // 2, info.kernel_size[1] // 2)
    return (
        info.kind == "conv2d"
        and info.kernel_size != (1, 1)
        and info.groups == 1
        and info.in_channels >= 2
        and info.stride == (1, 1)
        and info.dilation == (1, 1)
        and same_padding
        and all(
            get_method(m).refusal(nn.Conv2d(info.in_channels, info.out_channels, info.kernel_size))
            is None
            for m in FORMATS
        )
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    data = load_mnist5k(seed=args.seed)
    model = get_model(args.arch)
    started = time.perf_counter()
    train(
        model, data, epochs=args.epochs, optimizer="adamw", lr=0.003, device="cpu", seed=args.seed
    )
    train_seconds = time.perf_counter() - started
    model.eval()
    baseline = evaluate(model, data, device="cpu").accuracy
    example = data.x_val[:1]
    layers = [info for info in tensorops.inventory(model, example) if eligible(info)]
    dense_params = sum(info.params for info in layers)
    results: dict[str, Any] = {
        "arch": args.arch,
        "dataset": "mnist5k",
        "epochs": args.epochs,
        "seed": args.seed,
        "train_seconds": train_seconds,
        "baseline_accuracy": baseline,
        "layers": [
            {"name": i.name, "shape": list(i.weight_shape), "params": i.params} for i in layers
        ],
        "dense_params": dense_params,
        "rows": [],
        "machine": machine_info(),
        "versions": versions(),
    }
    for budget in args.budgets:
        for method in FORMATS:
            results["rows"].append(_measure(model, data, layers, method, budget, args.seed))
    return results


def _measure(
    model: nn.Module, data: Any, layers: list[LayerInfo], method: str, budget: float, seed: int
) -> dict[str, Any]:
    plan: dict[str, Choice] = {}
    for info in layers:
        ranks = ranks_within(method, info, budget * info.params)
        if ranks is not None:
            plan[info.name] = Choice(method, ranks)
    row: dict[str, Any] = {"method": method, "budget": budget, "layers": {}}
    if len(plan) < len(layers):
        row["skipped"] = "some layer has no ranks within the budget"
        return row
    started = time.perf_counter()
    small = compress(model, Plan(plan), seed=seed).eval()
    row["decompose_seconds"] = time.perf_counter() - started
    params = 0
    errors = []
    for info in layers:
        layer = small.get_submodule(info.name)
        error = tensorops.decompositions.relative_error(
            model.get_submodule(info.name).weight, effective_kernel(layer, info)
        )
        count = sum(p.numel() for p in layer.parameters())
        params += count
        errors.append(error)
        row["layers"][info.name] = {
            "ranks": list(plan[info.name].ranks),
            "params": count,
            "relative_error": error,
        }
    row["params"] = params
    row["mean_relative_error"] = sum(errors) / len(errors)
    row["accuracy"] = evaluate(small, data, device="cpu").accuracy
    return row


def table(results: dict[str, Any]) -> str:
    headers = [
        "budget",
        "format",
        "params (eligible convs)",
        "mean rel. kernel error",
        "max rel. kernel error",
        "val. accuracy (no fine-tune)",
    ]
    rows = []
    for row in results["rows"]:
        if "skipped" in row:
            rows.append([f"{row['budget']:g}", row["method"], "-", "-", "-", row["skipped"]])
            continue
        worst = max(layer["relative_error"] for layer in row["layers"].values())
        rows.append(
            [
                f"{row['budget']:g}",
                row["method"],
                f"{row['params']} ({100 * row['params'] / results['dense_params']:.1f}%)",
                f"{row['mean_relative_error']:.4f}",
                f"{worst:.4f}",
                f"{100 * row['accuracy']:.2f}%",
            ]
        )
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="rankopt:minivgg")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"conv_formats_{args.arch.split(':')[-1]}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    names = ", ".join(f"{i['name']} {tuple(i['shape'])}" for i in results["layers"])
    print(f"## Conv formats at equal parameter budgets: {results['arch']} on mnist5k\n")
    print(
        f"Baseline accuracy {100 * results['baseline_accuracy']:.2f}% after {results['epochs']} "
        f"epochs ({results['train_seconds']:.0f} s). Layers: {names}; dense params "
        f"{results['dense_params']}.\n"
    )
    print(table(results))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
