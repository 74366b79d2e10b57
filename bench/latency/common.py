"""What the latency benchmark's experiments share: its configuration, the interleaved timing
(the search's own :func:`worker.search.time_rounds`), the plans it compares, the models and
searches it builds, and number formats."""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from bench_decompositions import trained_like_kernel
from torch import nn

import tensorops as to
from worker.data import DataBundle
from worker.search import (
    LayerSpace,
    SearchConfig,
    build_space,
    finalize,
    median_ratio,
    open_study,
    plan_from_params,
    prepare,
    run_trials,
    seed_trials,
    time_rounds,
)
from worker.training import train

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
    round) so that load changes hit all alike (the search's :func:`time_rounds`); the number
    of rounds is chosen from a warm-up so that the group takes about ``cfg.group_seconds``."""
    names = list(models)
    group = [models[name].eval() for name in names]
    cpu = torch.device("cpu")
    warm = time_rounds(group, x, device=cpu, rounds=cfg.warmup)
    per_round = sum(min(v) for v in warm) if cfg.warmup else 0.0
    rounds = int(cfg.group_seconds / max(per_round, 1e-9))
    rounds = max(cfg.min_rounds, min(cfg.max_rounds, rounds))
    times = time_rounds(group, x, device=cpu, rounds=rounds)
    return dict(zip(names, times)), rounds


#: Median over rounds of reference time / candidate time.
paired_speedup = median_ratio


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


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}" if seconds < 0.01 else f"{seconds * 1000:.1f}"


def fmt_acc(value: float | None) -> str:
    return "not measured" if value is None else f"{100 * value:.2f}%"
