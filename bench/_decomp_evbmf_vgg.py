"""The EVBMF and VGG-16 benchmarks of ``bench/bench_decompositions.py``."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from _common import (
    fmt_error,
    fmt_seconds,
    markdown_table,
    median_time,
    timed,
)
from _decomp_inputs import Config, evbmf_reference, planted_rank_matrix

import tensorops


def bench_evbmf(cfg: Config) -> dict[str, Any]:
    matrix = planted_rank_matrix(cfg.evbmf_shape, cfg.evbmf_planted_rank, cfg.evbmf_signal_scale)
    tensor = torch.from_numpy(matrix)
    repeats = max(cfg.repeats, 5)
    seconds, times, res = median_time(lambda: tensorops.evbmf(tensor), repeats)
    seconds_ref, times_ref, (rank_ref, sigma2_ref) = median_time(
        lambda: evbmf_reference(matrix), cfg.repeats
    )
    return {
        "shape": list(cfg.evbmf_shape),
        "planted_rank": cfg.evbmf_planted_rank,
        "signal_scale": cfg.evbmf_signal_scale,
        "tensorops_evbmf": {
            "seconds": seconds,
            "times": times,
            "rank": res.rank,
            "noise_variance": res.noise_variance,
        },
        "numpy_reference": {
            "seconds": seconds_ref,
            "times": times_ref,
            "rank": rank_ref,
            "noise_variance": sigma2_ref,
        },
    }


def print_evbmf(cfg: Config, ev: dict[str, Any]) -> None:
    shape = "x".join(map(str, ev["shape"]))
    print(
        f"\n## 3. EVBMF of a {shape} matrix "
        f"({ev['signal_scale']} · randn(·, {ev['planted_rank']}) @ randn + randn, "
        f"planted rank {ev['planted_rank']})\n"
    )
    t, r = ev["tensorops_evbmf"], ev["numpy_reference"]
    rows = [
        [
            "tensorops.evbmf",
            fmt_seconds(t["seconds"]),
            t["rank"],
            f"{t['noise_variance']:.5f}",
            f"median of {len(t['times'])}",
        ],
        [
            "numpy reference (thin np.linalg.svd + minimize_scalar)",
            fmt_seconds(r["seconds"]),
            r["rank"],
            f"{r['noise_variance']:.5f}",
            f"median of {len(r['times'])}",
        ],
    ]
    print(markdown_table(["method", "time", "rank", "noise variance", "timing"], rows))


def vgg16_shapes(widths: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    shapes = []
    n_in = 3
    for n_out in widths:
        shapes.append((n_out, n_in, 3, 3))
        n_in = n_out
    return shapes


def bench_vgg(cfg: Config) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    shapes = vgg16_shapes(cfg.vgg_widths)
    kernels = [
        torch.randn(shape, generator=generator) * math.sqrt(2.0 / (shape[1] * 9))
        for shape in shapes
    ]

    def tucker_half(k: torch.Tensor) -> dict[str, Any]:
        res = tensorops.tucker2(k, (max(1, k.shape[0] // 2), max(1, k.shape[1] // 2)))
        return {"ranks": list(res.ranks), "error": res.relative_error}

    def cp_half(k: torch.Tensor) -> dict[str, Any]:
        res = tensorops.cp_als(k, max(1, min(k.shape[0], k.shape[1]) // 2))
        return {"rank": res.rank, "error": res.relative_error, "n_iter": res.n_iter}

    def evbmf_ranks(k: torch.Tensor) -> dict[str, Any]:
        return {"ranks": list(tensorops.tucker2_ranks(k))}

    methods: dict[str, Callable[[torch.Tensor], dict[str, Any]]] = {
        "Tucker-2, half ranks": tucker_half,
        "CP, rank min(out, in) / 2": cp_half,
        "EVBMF ranks (tucker2_ranks)": evbmf_ranks,
    }
    out: dict[str, Any] = {"shapes": [list(s) for s in shapes], "methods": {}}
    for name, fn in methods.items():
        layers = []
        for kernel in kernels:
            seconds, info = timed(functools.partial(fn, kernel))
            layers.append({"shape": list(kernel.shape), "seconds": seconds, **info})
        out["methods"][name] = {
            "total_seconds": sum(layer["seconds"] for layer in layers),
            "layers": layers,
        }
    return out


def print_vgg(cfg: Config, vgg: dict[str, Any]) -> None:
    print(
        f"\n## 4. Every conv layer of a CIFAR VGG-16 ({len(vgg['shapes'])} random 3x3 kernels, "
        "float32, 1 run each)\n"
    )
    kinds: list[str] = []
    counts: dict[str, int] = {}
    for shape in vgg["shapes"]:
        kind = f"{shape[0]}x{shape[1]}"
        if kind not in counts:
            kinds.append(kind)
            counts[kind] = 0
        counts[kind] += 1
    headers = [
        "method",
        "total",
        *[f"{k}" + (f" (x{counts[k]})" if counts[k] > 1 else "") for k in kinds],
    ]
    rows = []
    for name, method in vgg["methods"].items():
        per_kind = dict.fromkeys(kinds, 0.0)
        for layer in method["layers"]:
            per_kind[f"{layer['shape'][0]}x{layer['shape'][1]}"] += layer["seconds"]
        rows.append(
            [name, fmt_seconds(method["total_seconds"]), *[fmt_seconds(per_kind[k]) for k in kinds]]
        )
    print("Seconds per layer kind (out x in channels), summed over the layers of that kind:\n")
    print(markdown_table(headers, rows))
    details = []
    for layer_t, layer_c, layer_e in zip(*(m["layers"] for m in vgg["methods"].values())):
        details.append(
            [
                "x".join(map(str, layer_t["shape"])),
                f"{tuple(layer_t['ranks'])}",
                fmt_error(layer_t["error"]),
                layer_c["rank"],
                fmt_error(layer_c["error"]),
                layer_c["n_iter"],
                f"{tuple(layer_e['ranks'])}",
            ]
        )
    print("\nPer layer:\n")
    print(
        markdown_table(
            [
                "kernel",
                "Tucker-2 ranks",
                "Tucker-2 error",
                "CP rank",
                "CP error",
                "CP sweeps",
                "EVBMF ranks",
            ],
            details,
        )
    )
