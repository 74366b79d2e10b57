"""The seed plans enqueued before the sampler takes over (see :func:`seed_trials`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from tensorops import KEEP, LayerInfo, get_method
from worker.search._config import SearchConfig
from worker.search._ratio_seeds import ratio_seeds
from worker.search._space import (
    LayerSpace,
    default_method,
    evbmf_params,
    output_layer,
    scale_within,
    small_layers,
)

__all__ = ["seed_budget", "seed_trials"]


def seed_budget(trials: int) -> int:
    """How many seed trials a budget of ``trials`` enqueues: all but a quarter of it, so that
    the sampler and the pushes always get turns (8 trials: 6 seeds; 40: up to 30)."""
    return max(1, trials - trials // 4)


def seed_trials(
    model: nn.Module,
    spaces: list[LayerSpace],
    layers: list[LayerInfo],
    config: SearchConfig,
    *,
    sensitivity: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    speedups: Mapping[str, Mapping[str, float]] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The EVBMF plans enqueued before the sampler takes over, each with a label.

    1. ``evbmf-tucker2``: Kim et al.'s recipe, Tucker-2 at the EVBMF ranks on every spatial
       conv and SVD elsewhere;
    2. ``ratio-<r>x`` for each target ratio in ``config.ratio_targets`` (given
       ``sensitivity``, see :mod:`worker.search._ratio_seeds`): per-layer ranks allocated
       greedily from the sensitivity curves for the best predicted accuracy at that ratio;
       they come early so that a small trial budget still spans the compression axis;
    3. ``evbmf-cp-where-cheaper``: the same, with CP wherever CP at its EVBMF-derived rank costs
       less than Tucker-2 (by the search objective's cost, parameters for latency);
    4. ``sensitivity-<b>pt`` for each budget ``b`` in ``config.sensitivity_budgets`` (given
       ``sensitivity``, see :mod:`worker.search._sensitivity`): every scanned layer at the
       smallest rank scale whose solo drop before fine-tuning is within ``b`` points (dense
       when none is); identical plans are enqueued once;
    5. ``evbmf-tucker2-x<f>``: the first at 0.5x and 1.5x the EVBMF ranks (those inside
       ``rank_scale``);
    6. with ``speedups`` (latency objective, see :mod:`worker.search._layer_latency`):
       ``latency-fastest``, every layer with its fastest method when that beats the dense
       layer, dense otherwise; and the seeds after the first keep dense every layer whose method was
       measured slower than the dense layer.

    The output layer (the last one the forward pass reaches) stays dense in every seed, as in
    Kim et al.: its EVBMF rank is often below the number of classes. The seeds after the first
    also keep dense every layer whose share of the model's cost is below ``config.seed_min_share``
    (a first conv over 1 to 3 input channels, typically): decomposing it saves almost nothing
    and EVBMF's rank for it can be ruinous. The sampler may still decompose any of them.
    """
    by_name = {info.name: info for info in layers}
    metric = "macs" if config.objective == "macs" else "params"
    tucker = evbmf_params(spaces, layers, config)
    mixed: dict[str, Any] = {}
    output = output_layer(spaces, layers)
    small = small_layers(spaces, layers, config)
    unit = min(max(1.0, config.rank_scale[0]), config.rank_scale[1])
    for space in spaces:
        default = tucker[space.method_param]
        choice = KEEP if space.name in small else default
        if "cp" in space.methods and choice == "tucker2":
            info = by_name[space.name]
            cp_cost = getattr(get_method("cp").cost(info, space.seed_ranks["cp"]), metric)
            tucker_cost = getattr(
                get_method("tucker2").cost(info, space.seed_ranks["tucker2"]), metric
            )
            if cp_cost < tucker_cost:
                choice = "cp"
        mixed[space.method_param] = choice
        mixed[space.scale_param] = unit
    trimmed = {
        k: (KEEP if k.endswith(".method") and k[: -len(".method")] in small else v)
        for k, v in tucker.items()
    }
    low, high = config.rank_scale
    seeds: list[tuple[str, dict[str, Any]]] = [("evbmf-tucker2", tucker)]
    if sensitivity:
        seeds += [
            (label, params)
            for label, params in ratio_seeds(model, spaces, layers, config, sensitivity)
            if params != tucker
        ]
    if mixed != tucker:
        seeds.append(("evbmf-cp-where-cheaper", mixed))
    for budget in config.sensitivity_budgets if sensitivity else ():
        params = dict(trimmed)
        for space in spaces:
            scanned = sensitivity.get(space.name) if sensitivity else None
            if scanned is None or params[space.method_param] == KEEP:
                continue
            scale = scale_within(scanned, budget)
            params[space.method_param] = KEEP if scale is None else default_method(space)
            params[space.scale_param] = unit if scale is None else scale
        if all(params != other for _, other in seeds):
            seeds.append((f"sensitivity-{budget:g}pt", params))
    for factor in (0.5, 1.5):
        if low <= factor <= high:
            scaled = {k: (factor if k.endswith(".rank_scale") else v) for k, v in trimmed.items()}
            seeds.append((f"evbmf-tucker2-x{factor:g}", scaled))
    if speedups:
        seeds = _avoid_slow_layers(seeds, spaces, speedups, output, unit)
    return seeds


def _avoid_slow_layers(
    seeds: list[tuple[str, dict[str, Any]]],
    spaces: list[LayerSpace],
    speedups: Mapping[str, Mapping[str, float]],
    output: str | None,
    unit: float,
) -> list[tuple[str, dict[str, Any]]]:
    """Seeds after the first keep measured-slow layers dense; add ``latency-fastest``."""
    out = [seeds[0]]
    for label, params in seeds[1:]:
        fixed = dict(params)
        for space in spaces:
            method = fixed[space.method_param]
            if method != KEEP and speedups.get(space.name, {}).get(method, 2.0) < 1.0:
                fixed[space.method_param] = KEEP
        if all(fixed != other for _, other in out):
            out.append((label, fixed))
    fastest: dict[str, Any] = {}
    for space in spaces:
        speeds = speedups.get(space.name, {})
        best = max(speeds, key=lambda m: speeds[m]) if speeds else None
        ok = best is not None and space.name != output and speeds[best] > 1.0
        fastest[space.method_param] = best if ok else KEEP
        fastest[space.scale_param] = unit
    if all(fastest != other for _, other in out):
        out.insert(1, ("latency-fastest", fastest))
    return out
