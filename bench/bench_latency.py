"""Measured CPU latency of compressed models against their MAC reduction, per layer and per
model, and what the search's latency objective chooses where factorised layers are slow.

Usage::

    .venv/bin/python bench/bench_latency.py [--quick] [--threads 1 2] [--out bench/results]
        [--search-arch rankopt:minivgg] [--search-batch 32] [--search-trials 12]

What runs, in one command (25 minutes on 2 cores that other jobs kept busy, load 7 to 10;
an estimated 10 on 2 quiet ones; ``--quick`` 6 busy, about 2 quiet):

1. **Models.** ``rankopt:lenet5``, ``rankopt:minivgg`` and ``rankopt:lenet500_300`` trained for
   a few epochs on mnist5k (AdamW, lr 0.01, one-cycle), and the CIFAR-size
   ``rankopt:vgg11_bn`` at 3x32x32, *not trained*: its conv and linear weights are synthetic
   "trained-looking" tensors (a decaying-spectrum low-multilinear-rank part plus noise, see
   ``bench_decompositions.trained_like_kernel``) so that EVBMF finds plausible ranks. Its
   accuracy is not measured; its compressed variants are built as structure only (latency
   does not depend on weight values).
2. **Variants** per model: ``evbmf-tucker2`` (Kim et al. 2016: the search's first seed plan,
   Tucker-2 on spatial convs and SVD on matrices at the EVBMF ranks, output layer dense),
   ``evbmf-cp`` (the same with CP on every spatial conv at its EVBMF-derived rank),
   ``uniform-2x`` / ``uniform-4x`` (Tucker-2 on spatial convs, SVD elsewhere, every layer but
   the output one at 1/2 resp. 1/4 of its parameters; a layer that cannot reach the ratio
   stays dense), and for the trained nets the plan a quick params-objective search picks
   (``search-params``) and, for ``--search-arch``, the latency-objective search's plan
   (``search-latency``). Trained-net variants other than the search plans are fine-tuned for
   one epoch before their accuracy is read (the searches' plans are finalised by the search).
3. **Latency**: ``torch.inference_mode``, eval mode, batch 1 and batch 32, for each thread
   count in ``--threads`` (``torch.set_num_threads``). The original and all its variants run
   interleaved, one forward pass each per round with the order rotating every round, after
   warm-up; medians and IQRs are over rounds, and the speed-up is the median over rounds of
   (original's time / variant's time), which is steadier than a ratio of medians when other
   processes share the cores. Goal per row: speed-up >= 0.7 * min(MAC reduction, 4).
4. **Per layer**: for every compressible layer of the CIFAR-size net and of the search net,
   the dense layer against Tucker-2, CP and SVD at the seed ranks, on a random input of that
   layer's shape; speed-ups under 0.9 are marked slower, 0.9 to 1.1 as about dense.
5. **Latency objective**: on the search net, one search with ``objective="params"`` and one
   with ``objective="latency"`` (``latency_batch_size=--search-batch``), same seed and budget,
   one epoch per trial. Per layer: what each chose, and that choice's measured speed-up over
   the dense layer at the search batch; the reading says whether the latency search avoided
   the factorisations measured slower than dense.

Prints markdown tables (machine and versions first, load average and CPU pressure before and
after), writes ``<out>/latency[_quick].json`` and ``<out>/latency[_quick].png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from _common import cpu_pressure, machine_info, markdown_table, print_machine, versions
from bench_decompositions import trained_like_kernel
from torch import nn

import tensorops as to
from worker.data import DataBundle, load_dataset
from worker.search import (
    LayerSpace,
    SearchConfig,
    build_space,
    finalize,
    open_study,
    plan_from_params,
    prepare,
    run_trials,
    seed_trials,
)
from worker.training import train
from worker.zoo import get_model

DATASET = "mnist5k"
TRAINED_ARCHS = ("rankopt:lenet5", "rankopt:minivgg", "rankopt:lenet500_300")
CIFAR_ARCH = "rankopt:vgg11_bn"
CIFAR_SHAPE = (3, 32, 32)
BATCHES = (1, 32)
GOAL_FRACTION = 0.7
GOAL_CAP = 4.0
SLOWER_BELOW = 0.9  # a per-layer speed-up under this is "slower than dense"
FASTER_ABOVE = 1.1
MAX_DROP = 1.0
KEEP = to.KEEP
FACTORISED = ("tucker2", "cp", "svd")


@dataclass(frozen=True)
class BenchConfig:
    quick: bool
    threads: tuple[int, ...]
    train_epochs: int
    max_train: int | None
    finetune_epochs: int
    search_arch: str
    search_batch: int
    search_trials: int
    search_final_epochs: int
    group_seconds: float  # target timing time per (model, threads, batch) group
    layer_seconds: float  # the same per (layer, threads, batch) group
    min_rounds: int
    max_rounds: int
    warmup: int
    cifar_arch: str


@dataclass(frozen=True)
class Variant:
    name: str
    plan: to.Plan
    note: str = ""
    accuracy: float | None = None  # fraction; None when not measured


# ---------------------------------------------------------------------------------- timing


def load_now() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        v = values[0]
        return v, v, v
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def interleaved(
    models: dict[str, nn.Module], x: torch.Tensor, cfg: BenchConfig
) -> tuple[dict[str, list[float]], int]:
    """Seconds per forward pass of every model, interleaved round-robin (order rotating each
    round) so that load changes hit all alike; the number of rounds is chosen from a warm-up
    so that the group takes about ``cfg.group_seconds``."""
    names = list(models)
    for model in models.values():
        model.eval()
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        warm: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(cfg.warmup):
            for name in names:
                start = time.perf_counter()
                models[name](x)
                warm[name].append(time.perf_counter() - start)
        per_round = sum(min(v) for v in warm.values())
        rounds = int(cfg.group_seconds / max(per_round, 1e-9))
        rounds = max(cfg.min_rounds, min(cfg.max_rounds, rounds))
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                models[name](x)
                times[name].append(time.perf_counter() - start)
    return times, rounds


def paired_speedup(reference: Sequence[float], candidate: Sequence[float]) -> float:
    """Median over rounds of reference time / candidate time."""
    return statistics.median(r / max(c, 1e-12) for r, c in zip(reference, candidate))


def goal_speedup(mac_reduction: float) -> float:
    return GOAL_FRACTION * min(mac_reduction, GOAL_CAP)


# ---------------------------------------------------------------------------------- plans


def output_layer(layers: Sequence[to.LayerInfo]) -> str | None:
    reached = [info.name for info in layers if info.macs > 0]
    return reached[-1] if reached else None


def kim_params(
    model: nn.Module, spaces: list[LayerSpace], layers: list[to.LayerInfo], config: SearchConfig
) -> dict[str, Any]:
    """The ``evbmf-tucker2`` seed's trial parameters (the first seed plan)."""
    label, params = seed_trials(model, spaces, layers, config)[0]
    assert label == "evbmf-tucker2", label
    return params


def evbmf_plans(
    model: nn.Module, layers: list[to.LayerInfo], config: SearchConfig
) -> tuple[list[LayerSpace], to.Plan, to.Plan]:
    """The search space, Kim et al.'s EVBMF Tucker-2 plan and the same with CP on spatial convs."""
    spaces = build_space(model, layers, config)
    tucker = kim_params(model, spaces, layers, config)
    cp = dict(tucker)
    for space in spaces:
        if cp[space.method_param] == "tucker2" and "cp" in space.methods:
            cp[space.method_param] = "cp"
    return (
        spaces,
        plan_from_params(model, spaces, tucker, config),
        plan_from_params(model, spaces, cp, config),
    )


def base_plans(kim: to.Plan, cp: to.Plan) -> list[tuple[str, to.Plan, str]]:
    """The two EVBMF variants with their notes."""
    same = "the same plan as evbmf-tucker2 (no spatial conv for CP)" if cp == kim else ""
    return [("evbmf-tucker2", kim, ""), ("evbmf-cp", cp, same)]


def uniform_choice(module: nn.Module, info: to.LayerInfo, ratio: float) -> to.Choice | None:
    """Tucker-2 (spatial conv) or SVD (matrix, 1x1 conv) with at most 1/ratio of the layer's
    parameters and ranks as large as that allows (Tucker-2: both ranks the same fraction of
    their channels); None when no rank reaches the ratio."""
    methods = to.applicable_methods(module)
    budget = info.params / ratio
    if "tucker2" in methods:
        method = to.get_method("tucker2")
        max_out, max_in = method.max_ranks(module)
        for step in range(400, 0, -1):
            fraction = step / 400
            ranks = (max(1, round(fraction * max_out)), max(1, round(fraction * max_in)))
            if method.cost(info, ranks).params <= budget:
                return to.Choice("tucker2", ranks)
        return None
    if "svd" in methods:
        method = to.get_method("svd")
        (limit,) = method.max_ranks(module)
        for rank in range(limit, 0, -1):
            if method.cost(info, (rank,)).params <= budget:
                return to.Choice("svd", (rank,))
    return None


def uniform_plan(model: nn.Module, layers: list[to.LayerInfo], ratio: float) -> tuple[to.Plan, str]:
    output = output_layer(layers)
    choices: dict[str, to.Choice] = {}
    dense: list[str] = []
    for info in layers:
        if not info.compressible or info.name == output:
            continue
        choice = uniform_choice(model.get_submodule(info.name), info, ratio)
        if choice is None:
            dense.append(info.name)
        else:
            choices[info.name] = choice
    note = f"dense (ratio unreachable): {', '.join(dense)}" if dense else ""
    return to.Plan(choices), note


def plan_text(plan: to.Plan, name: str) -> str:
    choice = plan.get(name)
    if choice is None or choice.keeps:
        return "keep"
    return f"{choice.method}{tuple(choice.ranks)}"


# ---------------------------------------------------------------------------------- models


def trained_like(model: nn.Module) -> nn.Module:
    """Overwrite every conv and linear weight with a deterministic trained-looking tensor."""
    with torch.no_grad():
        for index, module in enumerate(model.modules()):
            if isinstance(module, nn.Conv2d) and module.groups == 1:
                kernel = trained_like_kernel(
                    module.out_channels,
                    module.in_channels,
                    size=module.kernel_size[0],
                    seed=index,
                )
                module.weight.copy_(torch.from_numpy(kernel).reshape(module.weight.shape))
            elif isinstance(module, nn.Linear):
                kernel = trained_like_kernel(
                    module.out_features, module.in_features, size=1, seed=index
                )
                module.weight.copy_(torch.from_numpy(kernel).reshape(module.weight.shape))
    return model.eval()


def finetuned_accuracy(
    model: nn.Module, data: DataBundle, epochs: int, seed: int = 0
) -> float | None:
    if epochs < 1:
        return None
    fit = train(model, data, epochs=epochs, optimizer="adamw", lr=0.003, device="cpu", seed=seed)
    model.to("cpu").eval()
    return fit.final_val_accuracy


# ---------------------------------------------------------------------------------- searches


def search_config(cfg: BenchConfig, objective: str) -> SearchConfig:
    return SearchConfig(
        trials=cfg.search_trials,
        max_accuracy_drop=MAX_DROP,
        objective=objective,  # type: ignore[arg-type]
        seed=0,
        epochs_per_trial=1,
        final_epochs=cfg.search_final_epochs,
        batch_size=64,
        device="cpu",
        latency_batch_size=cfg.search_batch,
    )


def run_search(
    model: nn.Module, data: DataBundle, config: SearchConfig, arch: dict[str, Any]
) -> dict[str, Any]:
    started = time.perf_counter()
    ctx = prepare(copy.deepcopy(model), data, config)
    study = open_study(
        ctx, storage=optuna.storages.InMemoryStorage(), study_name=f"latency-{config.objective}"
    )
    run_trials(ctx, study)
    with tempfile.TemporaryDirectory(prefix="bench_latency_") as tmp:
        result = finalize(ctx, study, Path(tmp), arch=arch)
        small = to.load_compressed(result.checkpoint).to("cpu").eval()
    report = result.report
    trials = [
        {
            "number": t["number"],
            "state": t["state"],
            "seed": t.get("seed"),
            "accuracy_drop": t.get("accuracy_drop"),
            "compression": t.get("compression"),
            "latency_s": t.get("latency_s"),
            "plan": t.get("plan"),
        }
        for t in report["trials"]
        if t["state"] in ("COMPLETE", "PRUNED", "FAIL")
    ]
    return {
        "objective": config.objective,
        "config": config.to_dict(),
        "plan": report["plan"],
        "found_feasible": report["found_feasible"],
        "final_accuracy": report["final"]["accuracy"],
        "final_accuracy_drop": report["final"]["accuracy_drop"],
        "ratios": report["ratios"],
        "chosen_trial": report["chosen_trial"],
        "verification": report["verification"],
        "trials": trials,
        "seconds": time.perf_counter() - started,
        "model": small,
    }


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


def objective_check(
    model: nn.Module,
    layers: list[to.LayerInfo],
    searches: dict[str, dict[str, Any]],
    cfg: BenchConfig,
    shape: tuple[int, int, int],
) -> dict[str, Any]:
    """Per layer: each search's choice and its measured speed-up over the dense layer at the
    search batch (first thread count); which chosen factorisations are slower than dense."""
    torch.set_num_threads(cfg.threads[0])
    plans = {obj: to.Plan.from_dict(s["plan"]) for obj, s in searches.items()}
    rows = []
    slow: dict[str, list[str]] = {obj: [] for obj in plans}
    for info in layers:
        if not info.compressible:
            continue
        row: dict[str, Any] = {"layer": info.name, "choices": {}}
        for objective, plan in plans.items():
            choice = plan.get(info.name)
            if choice is None or choice.keeps:
                row["choices"][objective] = {"choice": "keep", "speedup": 1.0}
                continue
            speed, dense_s = choice_speedup(model, info, choice, cfg.search_batch, cfg)
            row["choices"][objective] = {
                "choice": plan_text(plan, info.name),
                "speedup": speed,
                "verdict": verdict(speed),
                "dense_s": dense_s,
                "added_s": dense_s * (1.0 / max(speed, 1e-12) - 1.0),
            }
            if speed < SLOWER_BELOW:
                slow[objective].append(info.name)
        rows.append(row)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(cfg.search_batch, *shape, generator=gen)
    times, _ = interleaved({"original": model}, x, cfg)
    return {
        "batch": cfg.search_batch,
        "threads": torch.get_num_threads(),
        "model_median_s": statistics.median(times["original"]),
        "rows": rows,
        "slow_choices": slow,
    }


# ---------------------------------------------------------------------------------- printing


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}" if seconds < 0.01 else f"{seconds * 1000:.1f}"


def fmt_acc(value: float | None) -> str:
    return "not measured" if value is None else f"{100 * value:.2f}%"


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


def print_objective(record: dict[str, Any]) -> None:
    check = record.get("objective_check")
    if not check:
        return
    searches = record["searches"]
    print(
        f"\n## {record['arch']}: latency objective vs params objective "
        f"(latency batch {check['batch']}, {check['threads']} thread(s))\n"
    )
    summary = []
    for objective, search in searches.items():
        ratios = search["ratios"]
        summary.append(
            [
                objective,
                search["config"]["trials"],
                search["chosen_trial"],
                "yes" if search["found_feasible"] else "no",
                f"{search['final_accuracy_drop']:.2f} pt",
                f"{ratios.get('params', float('nan')):.2f}x",
                f"{ratios.get('macs', float('nan')):.2f}x",
                f"{ratios.get('latency', float('nan')):.2f}x",
                f"{search['seconds']:.0f} s",
            ]
        )
    print(
        markdown_table(
            [
                "objective",
                "trials",
                "chosen trial",
                "feasible",
                "final drop",
                "params ratio",
                "MAC ratio",
                "latency ratio (search's own measure)",
                "wall",
            ],
            summary,
        )
    )
    print()
    objectives = list(searches)
    headers = ["layer"]
    for objective in objectives:
        headers += [f"{objective}: choice", f"{objective}: layer speed-up, time added"]
    table = []
    for row in check["rows"]:
        cells: list[object] = [row["layer"]]
        for objective in objectives:
            choice = row["choices"][objective]
            mark = choice.get("verdict", "")
            mark = f" **{mark}**" if mark == "SLOWER" else ""
            added = choice.get("added_s")
            extra = "" if added is None else f", {added * 1000:+.3f} ms"
            cells += [choice["choice"], f"{choice['speedup']:.2f}x{mark}{extra}"]
        table.append(cells)
    print(markdown_table(headers, table))
    print()
    model_ms = check["model_median_s"] * 1000
    for objective in objectives:
        slow = check["slow_choices"][objective]
        added = sum(
            row["choices"][objective].get("added_s", 0.0)
            for row in check["rows"]
            if row["layer"] in slow
        )
        print(
            f"* {objective} search: {len(slow)} chosen factorisation(s) measured slower than "
            f"dense at batch {check['batch']}"
            + (
                f" ({', '.join(slow)}), together {added * 1000:+.3f} ms, "
                f"{100 * added / check['model_median_s']:.1f}% of the original's {model_ms:.2f} ms"
                if slow
                else ""
            )
        )
    for objective, search in searches.items():
        checks = search.get("verification") or []
        text = "; ".join(
            f"trial {c['trial']} ({c['compression']:.2f}x): drop {c['final_accuracy_drop']:.2f} pt "
            + ("met" if c["met"] else "rejected")
            for c in checks
        )
        print(f"* {objective} search, final fine-tune of the candidates: {text or 'none'}")
    trials = searches.get("latency", {}).get("trials", [])
    if trials:
        print("\nLatency search trials (compression = the search's measured speed-up):\n")
        table = [
            [
                t["number"],
                t["seed"] or "sampler",
                t["state"],
                "-" if t["accuracy_drop"] is None else f"{t['accuracy_drop']:.2f}",
                "-" if t["compression"] is None else f"{t['compression']:.2f}x",
                sum(
                    1
                    for c in (t["plan"] or {}).values()
                    if isinstance(c, dict) and c.get("method") != KEEP
                ),
            ]
            for t in trials
        ]
        print(
            markdown_table(
                ["trial", "seed plan", "state", "drop (pt)", "speed-up", "layers factorised"],
                table,
            )
        )


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


# ---------------------------------------------------------------------------------- main


def make_config(args: argparse.Namespace) -> BenchConfig:
    threads = tuple(args.threads)
    if args.quick:
        return BenchConfig(
            quick=True,
            threads=threads,
            train_epochs=3,
            max_train=1000,
            finetune_epochs=1,
            search_arch=args.search_arch,
            search_batch=args.search_batch,
            search_trials=args.search_trials or 3,
            search_final_epochs=1,
            group_seconds=0.5,
            layer_seconds=0.3,
            min_rounds=5,
            max_rounds=40,
            warmup=2,
            cifar_arch=args.cifar_arch,
        )
    return BenchConfig(
        quick=False,
        threads=threads,
        train_epochs=3,
        max_train=None,
        finetune_epochs=1,
        search_arch=args.search_arch,
        search_batch=args.search_batch,
        search_trials=args.search_trials or 12,
        search_final_epochs=1,
        group_seconds=4.0,
        layer_seconds=2.0,
        min_rounds=15,
        max_rounds=400,
        warmup=5,
        cifar_arch=args.cifar_arch,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, for a smoke test")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (1 2)"
    )
    parser.add_argument("--out", default="bench/results", help="folder for the JSON and plot")
    parser.add_argument(
        "--archs", nargs="+", default=list(TRAINED_ARCHS), help="trained (mnist5k) models"
    )
    parser.add_argument("--cifar-arch", default=CIFAR_ARCH, help="untrained CIFAR-size model")
    parser.add_argument(
        "--search-arch",
        default="rankopt:minivgg",
        help="the trained model that gets the latency-objective search too",
    )
    parser.add_argument(
        "--search-batch", type=int, default=32, help="latency_batch_size of the latency search"
    )
    parser.add_argument(
        "--search-trials", type=int, default=None, help="trials per search (12; 3 with --quick)"
    )
    args = parser.parse_args(argv)
    if any(t < 1 for t in args.threads) or args.search_batch < 1:
        parser.error("--threads and --search-batch must be >= 1")
    if args.search_trials is not None and args.search_trials < 1:
        parser.error("--search-trials must be >= 1")
    cfg = make_config(args)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    torch.set_num_threads(cfg.threads[0])
    started = time.perf_counter()
    machine = machine_info()
    vers = versions()
    print("# rankopt CPU latency benchmark" + (" (--quick)" if cfg.quick else ""))
    print("\nCommand: " + " ".join(["bench/bench_latency.py", *(argv or sys.argv[1:])]))
    print_machine(
        machine,
        vers,
        heading="Machine and versions (before the run)",
        threads_label="torch.get_num_threads() at start",
    )
    sys.stdout.flush()

    data = load_dataset(DATASET, seed=0, max_train=cfg.max_train)
    records: list[dict[str, Any]] = []
    for arch in args.archs:
        print(f"[{arch}] ...", file=sys.stderr, flush=True)
        record = bench_trained(arch, data, cfg)
        records.append(record)
        print_rows(record)
        print_per_layer(record)
        print_objective(record)
        sys.stdout.flush()
    print(f"[{cfg.cifar_arch}] ...", file=sys.stderr, flush=True)
    cifar = bench_cifar(cfg)
    records.append(cifar)
    print_rows(cifar)
    print_per_layer(cifar)
    print_summary(records)

    after_load = list(os.getloadavg()) if hasattr(os, "getloadavg") else []
    after_pressure = cpu_pressure()
    total = time.perf_counter() - started
    print(
        f"\nTotal {total:.0f} s. After the run: load average "
        + " ".join(f"{v:.2f}" for v in after_load)
        + ", CPU pressure (PSI some avg10/60/300 %) "
        + (" ".join(f"{v:.1f}" for v in after_pressure.values()) or "-")
        + ". Other processes sharing the cores make every timing noisy; the interleaved, paired "
        "speed-ups are far less affected than the absolute milliseconds."
    )
    if cfg.quick:
        print("\n--quick: few rounds and trials; a smoke test, not evidence for the goals.")
    results = {
        "config": asdict(cfg),
        "machine": machine,
        "versions": {**vers, "optuna": optuna.__version__},
        "records": records,
        "load_average_after": after_load,
        "cpu_pressure_after": after_pressure,
        "total_seconds": total,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "latency_quick" if cfg.quick else "latency"
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    png_path = out / f"{stem}.png"
    plot(records, png_path)
    print(f"Results written to {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
