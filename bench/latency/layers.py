"""Per layer (experiment 4): each compressible layer dense against Tucker-2, CP and SVD at the
seed ranks, timed interleaved on a random input of the layer's shape."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from _common import markdown_table
from torch import nn

import tensorops as to
from latency.common import (
    FACTORISED,
    FASTER_ABOVE,
    SLOWER_BELOW,
    BenchConfig,
    fmt_ms,
    interleaved,
    paired_speedup,
)
from worker.search import (
    LayerSpace,
)

# ---------------------------------------------------------------------------------- per layer


def layer_input(info: to.LayerInfo, batch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if info.kind == "conv2d":
        h, w = info.input_size
        return torch.randn(batch, info.in_channels, h, w, generator=gen)
    positions = info.input_size[0]
    if positions > 1:
        return torch.randn(batch, positions, info.in_channels, generator=gen)
    return torch.randn(batch, info.in_channels, generator=gen)


def layer_variants(module: nn.Module, choices: dict[str, tuple[int, ...]]) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {"dense": copy.deepcopy(module)}
    for method, ranks in choices.items():
        out[method] = to.get_method(method).skeleton(module, ranks)
    return out


def verdict(speedup: float) -> str:
    if speedup < SLOWER_BELOW:
        return "SLOWER"
    if speedup <= FASTER_ABOVE:
        return "≈ dense"
    return "faster"


def per_layer(
    model: nn.Module,
    layers: list[to.LayerInfo],
    spaces: list[LayerSpace],
    cfg: BenchConfig,
    batches: Sequence[int],
) -> list[dict[str, Any]]:
    """Dense vs every seed-rank factorisation of each searchable layer, at each batch and
    thread count."""
    by_name = {info.name: info for info in layers}
    cfg = replace(cfg, group_seconds=cfg.layer_seconds)
    rows: list[dict[str, Any]] = []
    for threads in cfg.threads:
        torch.set_num_threads(threads)
        for space in spaces:
            info = by_name[space.name]
            module = model.get_submodule(space.name)
            seeds = {m: space.seed_ranks[m] for m in FACTORISED if m in space.seed_ranks}
            variants = layer_variants(module, seeds)
            for batch in batches:
                times, rounds = interleaved(variants, layer_input(info, batch), cfg)
                dense = times["dense"]
                row: dict[str, Any] = {
                    "layer": space.name,
                    "shape": list(info.weight_shape),
                    "input_size": list(info.input_size),
                    "threads": torch.get_num_threads(),
                    "batch": batch,
                    "rounds": rounds,
                    "dense_median_s": statistics.median(dense),
                    "methods": {},
                }
                for method, ranks in seeds.items():
                    cost = to.get_method(method).cost(info, ranks)
                    speed = paired_speedup(dense, times[method])
                    row["methods"][method] = {
                        "ranks": list(ranks),
                        "median_s": statistics.median(times[method]),
                        "speedup": speed,
                        "mac_reduction": info.macs / max(cost.macs, 1),
                        "verdict": verdict(speed),
                    }
                rows.append(row)
    return rows


def choice_speedup(
    model: nn.Module, info: to.LayerInfo, choice: to.Choice, batch: int, cfg: BenchConfig
) -> tuple[float, float]:
    """Measured speed-up of one factorised layer over its dense original, and the dense
    layer's median seconds."""
    module = model.get_submodule(info.name)
    variants = {
        "dense": copy.deepcopy(module),
        "chosen": to.get_method(choice.method).skeleton(module, tuple(choice.ranks)),
    }
    layer_cfg = replace(cfg, group_seconds=cfg.layer_seconds)
    times, _ = interleaved(variants, layer_input(info, batch), layer_cfg)
    return paired_speedup(times["dense"], times["chosen"]), statistics.median(times["dense"])


def print_per_layer(record: dict[str, Any]) -> None:
    rows = record.get("per_layer")
    if not rows:
        return
    print(f"\n## {record['arch']}: per-layer latency at the seed ranks\n")
    print(
        f"Speed-up of each factorised layer over the dense one (< {SLOWER_BELOW:g}: SLOWER, "
        f"{SLOWER_BELOW:g}–{FASTER_ABOVE:g}: ≈ dense); MAC reduction of the layer in brackets.\n"
    )
    methods = [m for m in FACTORISED if any(m in r["methods"] for r in rows)]
    headers = ["layer", "weight", "input", "threads", "batch", "dense ms", *methods]
    table = []
    for row in rows:
        cells: list[object] = [
            row["layer"],
            "x".join(str(s) for s in row["shape"]),
            "x".join(str(s) for s in row["input_size"]),
            row["threads"],
            row["batch"],
            fmt_ms(row["dense_median_s"]),
        ]
        for method in methods:
            info = row["methods"].get(method)
            if info is None:
                cells.append("-")
                continue
            mark = "" if info["verdict"] == "faster" else f" **{info['verdict']}**"
            cells.append(
                f"{tuple(info['ranks'])}: {info['speedup']:.2f}x "
                f"({info['mac_reduction']:.1f}x){mark}"
            )
        table.append(cells)
    print(markdown_table(headers, table))
