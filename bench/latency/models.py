"""Whole models (experiments 1 to 3): the trained nets and the CIFAR-size one, their variants,
timed interleaved against the original; the per-model tables, the summary and the plot."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from _common import markdown_table
from torch import nn

import tensorops as to
from latency.common import (
    BATCHES,
    CIFAR_SHAPE,
    DATASET,
    FACTORISED,
    BenchConfig,
    Variant,
    base_plans,
    evbmf_plans,
    finetuned_accuracy,
    fmt_acc,
    fmt_ms,
    goal_speedup,
    interleaved,
    load_now,
    paired_speedup,
    quartiles,
    run_search,
    search_config,
    trained_like,
    uniform_plan,
)
from latency.layers import per_layer
from latency.objective import objective_check
from worker.data import DataBundle
from worker.training import train
from worker.zoo import get_model

# ---------------------------------------------------------------------------------- whole models


def model_rows(
    arch: str,
    model: nn.Module,
    variants: list[Variant],
    compressed: dict[str, nn.Module],
    layers: list[to.LayerInfo],
    baseline: to.Cost,
    shape: tuple[int, int, int],
    cfg: BenchConfig,
    baseline_accuracy: float | None,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    group = {"original": model, **compressed}
    for threads in cfg.threads:
        torch.set_num_threads(threads)
        for batch in BATCHES:
            gen = torch.Generator().manual_seed(1)
            x = torch.randn(batch, *shape, generator=gen)
            load = load_now()
            times, rounds = interleaved(group, x, cfg)
            q1, med, q3 = quartiles(times["original"])
            for variant in variants:
                cost = to.estimate_cost(layers, variant.plan, total=baseline)
                mac_red = baseline.macs / max(cost.macs, 1)
                speed = paired_speedup(times["original"], times[variant.name])
                v1, vmed, v3 = quartiles(times[variant.name])
                goal = goal_speedup(mac_red)
                rows.append(
                    {
                        "arch": arch,
                        "variant": variant.name,
                        "note": variant.note,
                        "threads": torch.get_num_threads(),
                        "batch": batch,
                        "rounds": rounds,
                        "load_1min": load,
                        "params_ratio": baseline.params / max(cost.params, 1),
                        "mac_reduction": mac_red,
                        "original_median_s": med,
                        "original_iqr_s": [q1, q3],
                        "median_s": vmed,
                        "iqr_s": [v1, v3],
                        "speedup": speed,
                        "goal_speedup": goal,
                        "status": "PASS" if speed >= goal else "MISS",
                        "baseline_accuracy": baseline_accuracy,
                        "accuracy": variant.accuracy,
                    }
                )
    return rows


def bench_trained(arch: str, data: DataBundle, cfg: BenchConfig) -> dict[str, Any]:
    """Train ``arch``, build its variants (with searches), time them; the per-arch record."""
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads[0])
    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"num_classes": data.num_classes, "in_channels": data.input_shape[0]}
    model = get_model(arch, **kwargs)
    fit = train(
        model, data, epochs=cfg.train_epochs, optimizer="adamw", lr=0.01, device="cpu", seed=0
    )
    model = model.to("cpu").eval()
    example = data.example_input(1)
    layers = to.inventory(model, example)
    baseline = to.measure_cost(model, example)
    config = search_config(cfg, "params")
    spaces, kim, cp = evbmf_plans(model, layers, config)
    plans = base_plans(kim, cp)
    for ratio in (2.0, 4.0):
        plan, note = uniform_plan(model, layers, ratio)
        plans.append((f"uniform-{ratio:g}x", plan, note))
    variants: list[Variant] = []
    compressed: dict[str, nn.Module] = {}
    for name, plan, note in plans:
        small = to.compress(model, plan)
        accuracy = finetuned_accuracy(small, data, cfg.finetune_epochs)
        compressed[name] = small.eval()
        variants.append(Variant(name, plan, note, accuracy))
        print(f"[{arch}] built {name}", file=sys.stderr, flush=True)

    arch_spec = {"arch": arch, "kwargs": kwargs}
    objectives = ["params", "latency"] if arch == cfg.search_arch else ["params"]
    searches: dict[str, dict[str, Any]] = {}
    for objective in objectives:
        print(f"[{arch}] search, objective {objective} ...", file=sys.stderr, flush=True)
        torch.set_num_threads(cfg.threads[0])
        search = run_search(model, data, search_config(cfg, objective), arch_spec)
        small = search.pop("model")
        plan = to.Plan.from_dict(search["plan"])
        name = f"search-{objective}"
        compressed[name] = small.to("cpu").eval()
        note = "" if search["found_feasible"] else "no feasible plan: original kept"
        variants.append(Variant(name, plan, note, search["final_accuracy"]))
        searches[objective] = search
        print(
            f"[{arch}] search {objective}: {search['seconds']:.0f} s, ratios {search['ratios']}",
            file=sys.stderr,
            flush=True,
        )

    rows = model_rows(
        arch,
        model,
        variants,
        compressed,
        layers,
        baseline,
        data.input_shape,
        cfg,
        fit.final_val_accuracy,
    )
    record: dict[str, Any] = {
        "arch": arch,
        "trained": True,
        "baseline_accuracy": fit.final_val_accuracy,
        "train_s": fit.seconds,
        "baseline_cost": asdict(baseline),
        "plans": {v.name: v.plan.to_dict() for v in variants},
        "rows": rows,
        "searches": searches,
    }
    if arch == cfg.search_arch:
        record["per_layer"] = per_layer(model, layers, spaces, cfg, (cfg.search_batch,))
        record["objective_check"] = objective_check(model, layers, searches, cfg, data.input_shape)
    record["seconds"] = time.perf_counter() - started
    return record


def bench_cifar(cfg: BenchConfig) -> dict[str, Any]:
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads[0])
    torch.manual_seed(0)
    model = trained_like(get_model(cfg.cifar_arch, num_classes=10))
    example = torch.randn(1, *CIFAR_SHAPE, generator=torch.Generator().manual_seed(0))
    layers = to.inventory(model, example)
    baseline = to.measure_cost(model, example)
    config = search_config(cfg, "params")
    spaces, kim, cp = evbmf_plans(model, layers, config)
    plans = base_plans(kim, cp)
    for ratio in (2.0, 4.0):
        plan, note = uniform_plan(model, layers, ratio)
        plans.append((f"uniform-{ratio:g}x", plan, note))
    variants = [Variant(name, plan, note) for name, plan, note in plans]
    compressed = {v.name: to.compress(model, v.plan, weights=False).eval() for v in variants}
    print(f"[{cfg.cifar_arch}] variants built", file=sys.stderr, flush=True)
    rows = model_rows(
        cfg.cifar_arch, model, variants, compressed, layers, baseline, CIFAR_SHAPE, cfg, None
    )
    print(f"[{cfg.cifar_arch}] per-layer timing ...", file=sys.stderr, flush=True)
    layer_rows = per_layer(model, layers, spaces, cfg, BATCHES)
    return {
        "arch": cfg.cifar_arch,
        "trained": False,
        "weights": "synthetic trained-looking kernels (bench_decompositions.trained_like_kernel)",
        "baseline_cost": asdict(baseline),
        "plans": {v.name: v.plan.to_dict() for v in variants},
        "rows": rows,
        "per_layer": layer_rows,
        "seconds": time.perf_counter() - started,
    }


def print_rows(record: dict[str, Any]) -> None:
    arch = record["arch"]
    if record["trained"]:
        accuracy_note = (
            f"trained on {DATASET}, baseline accuracy {fmt_acc(record['baseline_accuracy'])}; "
            "variant accuracy after a 1-epoch fine-tune (search plans: after the search's final "
            "fine-tune)"
        )
    else:
        accuracy_note = "NOT trained (synthetic trained-looking weights): accuracy not measured"
    print(f"\n## {arch}: whole-model latency ({accuracy_note})\n")
    headers = [
        "variant",
        "threads",
        "batch",
        "params ratio",
        "MAC reduction",
        "original ms (IQR)",
        "compressed ms (IQR)",
        "speed-up",
        "goal",
        "status",
        "accuracy",
        "load 1 min",
    ]
    table = []
    for row in record["rows"]:
        o1, o3 = row["original_iqr_s"]
        v1, v3 = row["iqr_s"]
        table.append(
            [
                row["variant"],
                row["threads"],
                row["batch"],
                f"{row['params_ratio']:.2f}x",
                f"{row['mac_reduction']:.2f}x",
                f"{fmt_ms(row['original_median_s'])} ({fmt_ms(o1)}–{fmt_ms(o3)})",
                f"{fmt_ms(row['median_s'])} ({fmt_ms(v1)}–{fmt_ms(v3)})",
                f"{row['speedup']:.2f}x",
                f"{row['goal_speedup']:.2f}x",
                row["status"],
                fmt_acc(row["accuracy"]),
                "-" if row["load_1min"] is None else f"{row['load_1min']:.2f}",
            ]
        )
    print(markdown_table(headers, table))
    notes = {row["variant"]: row["note"] for row in record["rows"] if row["note"]}
    for name, note in notes.items():
        print(f"\n* {name}: {note}")


def print_summary(records: Sequence[dict[str, Any]]) -> None:
    print("\n## Goal summary: speed-up ≥ 0.7 × min(MAC reduction, 4)\n")
    table = []
    for record in records:
        rows = record["rows"]
        for threads in sorted({r["threads"] for r in rows}):
            for batch in BATCHES:
                sel = [r for r in rows if r["threads"] == threads and r["batch"] == batch]
                passing = [r["variant"] for r in sel if r["status"] == "PASS"]
                table.append(
                    [
                        record["arch"],
                        threads,
                        batch,
                        f"{len(passing)}/{len(sel)}",
                        ", ".join(passing) or "none",
                    ]
                )
    print(markdown_table(["model", "threads", "batch", "rows passing", "passing variants"], table))


# ---------------------------------------------------------------------------------- plot


def plot(records: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    markers = {1: "o", 32: "s"}
    top = 1.0
    for index, record in enumerate(records):
        color = f"C{index}"
        for batch in BATCHES:
            rows = [r for r in record["rows"] if r["batch"] == batch and r["threads"] == 1]
            rows = rows or [r for r in record["rows"] if r["batch"] == batch]
            xs = [r["mac_reduction"] for r in rows]
            ys = [r["speedup"] for r in rows]
            top = max(top, *xs, *ys)
            left.scatter(
                xs,
                ys,
                color=color,
                marker=markers[batch],
                label=f"{record['arch']} b{batch}",
                alpha=0.8,
            )
    grid = [1 + i * (top - 1) / 200 for i in range(201)]
    left.plot(grid, [goal_speedup(g) for g in grid], "k--", label="goal 0.7·min(MAC red., 4)")
    left.plot(grid, grid, color="grey", lw=0.8, label="speed-up = MAC reduction")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("MAC reduction")
    left.set_ylabel("measured speed-up (1 thread)")
    left.set_title("whole models")
    left.legend(fontsize=7)

    cifar = next((r for r in records if not r["trained"]), None)
    if cifar is not None:
        rows = [r for r in cifar["per_layer"] if r["batch"] == 32 and r["threads"] == 1]
        rows = rows or [r for r in cifar["per_layer"] if r["batch"] == 32]
        names = [r["layer"] for r in rows]
        width = 0.27
        for offset, method in enumerate(FACTORISED):
            ys = [r["methods"].get(method, {}).get("speedup", math.nan) for r in rows]
            xs = [i + (offset - 1) * width for i in range(len(rows))]
            right.bar(xs, ys, width=width, label=method)
        right.axhline(1.0, color="k", lw=0.8)
        right.set_xticks(range(len(names)))
        right.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        right.set_yscale("log")
        right.set_ylabel("layer speed-up over dense (batch 32)")
        right.set_title(f"{cifar['arch']} per layer, seed ranks")
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
