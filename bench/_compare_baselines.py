"""The baseline plans of ``bench/bench_compare.py``: one-shot and uniform compression."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from torch import nn

from tensorops import KEEP, Choice, LayerInfo, Plan, get_method
from worker.data import DataBundle
from worker.search import SearchConfig, prepare
from worker.search._config import drop_points
from worker.search._context import SearchContext
from worker.search._space import default_method, output_layer, plan_from_params

#: The uniform ladder stops climbing after this many consecutive rungs miss every tolerance.
LADDER_MISSES = 2


# --------------------------------------------------------------------------------------------
# Baseline plans


def one_shot_plan(ctx: SearchContext, conv_method: str) -> Plan:
    """EVBMF ranks everywhere; ``conv_method`` on spatial convs; the output layer dense."""
    output = output_layer(ctx.spaces, ctx.layers)
    params: dict[str, Any] = {}
    for space in ctx.spaces:
        if space.name == output:
            method = KEEP
        elif conv_method in space.methods:
            method = conv_method
        else:
            method = default_method(space)
        params[space.method_param] = method
        params[space.scale_param] = 1.0
    return plan_from_params(ctx.model, ctx.spaces, params, ctx.config)


def _svd_rank(info: LayerInfo, ratio: float, limit: int) -> int:
    kh, kw = info.kernel_size
    fan_in = info.in_channels * kh * kw
    rank = math.floor(info.out_channels * fan_in / (ratio * (fan_in + info.out_channels)))
    return max(1, min(rank, limit))


def _tucker_ranks(info: LayerInfo, ratio: float, limits: tuple[int, ...]) -> tuple[int, int]:
    """Channel ranks ``s * (out, in)`` whose Tucker-2 parameters are 1/ratio of the kernel's."""
    c_out, c_in = info.out_channels, info.in_channels
    k = info.kernel_size[0] * info.kernel_size[1]
    # s^2 * c_out * c_in * k + s * (c_in^2 + c_out^2) = c_out * c_in * k / ratio
    a, b, c = c_out * c_in * k, c_in**2 + c_out**2, -c_out * c_in * k / ratio
    s = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    r_out = max(1, min(round(s * c_out), limits[0]))
    r_in = max(1, min(round(s * c_in), limits[1]))
    return r_out, r_in


def uniform_plan(ctx: SearchContext, ratio: float, conv_method: str) -> Plan:
    """Every compressible layer but the output one at parameter ratio ``ratio``."""
    output = output_layer(ctx.spaces, ctx.layers)
    by_name = {info.name: info for info in ctx.layers}
    choices: dict[str, Choice] = {}
    for space in ctx.spaces:
        if space.name == output:
            continue
        info = by_name[space.name]
        module = ctx.model.get_submodule(space.name)
        if conv_method == "tucker2" and "tucker2" in space.methods:
            method = get_method("tucker2")
            ranks: tuple[int, ...] = _tucker_ranks(info, ratio, method.max_ranks(module))
        elif "svd" in space.methods:
            method = get_method("svd")
            ranks = (_svd_rank(info, ratio, method.max_ranks(module)[0]),)
        else:
            continue
        choices[space.name] = Choice(method.name, ranks)
    return Plan(choices)


def evaluate_plan(ctx: SearchContext, label: str, plan: Plan) -> dict[str, Any]:
    """Compress with ``plan``, fine-tune for the final budget, and measure."""
    started = time.perf_counter()
    model = ctx.compress(plan)
    fit = ctx.finetune(model, epochs=ctx.config.final_epochs, seed=ctx.config.seed)
    cost = ctx.plan_cost(plan)
    accuracy = float(fit.final_val_accuracy)
    return {
        "label": label,
        "plan": plan.to_dict(),
        "status": fit.status,
        "accuracy": accuracy,
        "accuracy_drop": drop_points(ctx.baseline_accuracy, accuracy),
        "params_ratio": ctx.baseline_cost.params / max(cost.params, 1),
        "macs_ratio": ctx.baseline_cost.macs / max(cost.macs, 1),
        "wall_s": time.perf_counter() - started,
    }


def run_baselines(
    model: nn.Module,
    data: DataBundle,
    config: SearchConfig,
    ladder: Sequence[float],
    *,
    tolerance: float,
    calibrate: bool = True,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any] | None]:
    """Every baseline's evaluated plans (a ladder of them for the uniform ones), and the
    learning-rate calibration they were fine-tuned with.

    With ``calibrate`` the baselines' fine-tunes use the multiplier rankopt's own calibration
    picks for this model (the same measurement, see :mod:`worker.search._calibrate`), so
    that no method gains from a better-suited learning rate; without it, the schedule's rates.
    """
    ctx = prepare(copy.deepcopy(model), data, config)
    calibration = ctx.calibrate_lr().to_dict() if calibrate else None
    if calibration is not None:
        print(f"    baselines fine-tune at x{ctx.lr_scale:g}", file=sys.stderr, flush=True)
    out: dict[str, list[dict[str, Any]]] = {
        "one-shot-tucker2": [evaluate_plan(ctx, "evbmf", one_shot_plan(ctx, "tucker2"))],
        "one-shot-cp": [evaluate_plan(ctx, "evbmf", one_shot_plan(ctx, "cp"))],
    }
    convs = any("tucker2" in space.methods for space in ctx.spaces)
    for name, method in (("uniform-svd", "svd"), ("uniform-tucker2", "tucker2")):
        if method == "tucker2" and not convs:
            continue  # no spatial conv: identical to uniform-svd
        rungs = []
        misses = 0
        for ratio in ladder:
            if misses >= LADDER_MISSES:
                break  # ``tolerance`` (the largest) missed twice running: higher rungs will too
            rung = evaluate_plan(ctx, f"{ratio:g}x", uniform_plan(ctx, ratio, method))
            rung["target_ratio"] = ratio
            rungs.append(rung)
            misses = misses + 1 if rung["accuracy_drop"] > tolerance else 0
            print(
                f"    {name} {ratio:g}x: {rung['params_ratio']:.2f}x, "
                f"drop {rung['accuracy_drop']:.2f} pt",
                file=sys.stderr,
                flush=True,
            )
        out[name] = rungs
    return out, calibration
