"""The search space: per compressible layer, a method (MTD) and a rank scale around EVBMF.

Parameter names are stable and readable: ``<layer>.method`` and ``<layer>.rank_scale``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from tensorops import KEEP, Choice, LayerInfo, Plan, applicable_methods, clamp_rank, get_method
from worker.search._config import SearchConfig


@dataclass(frozen=True)
class LayerSpace:
    """The choices for one layer and the EVBMF ranks that centre each method's scale."""

    name: str
    methods: tuple[str, ...]  # includes "keep"
    seed_ranks: Mapping[str, tuple[int, ...]]  # clamped EVBMF ranks per method
    raw_ranks: Mapping[str, tuple[int, ...]]  # EVBMF estimate before clamping (0 = noise)

    @property
    def method_param(self) -> str:
        return f"{self.name}.method"

    @property
    def scale_param(self) -> str:
        return f"{self.name}.rank_scale"


def build_space(
    model: nn.Module, layers: list[LayerInfo], config: SearchConfig
) -> list[LayerSpace]:
    """EVBMF-seeded choices for every compressible layer of ``model``.

    Structured pruning (``prune``) is never offered for the last layer the forward pass
    reaches: removing its output units would remove classes.
    """
    spaces = []
    reached = [info.name for info in layers if info.macs > 0]
    last = reached[-1] if reached else None
    for info in layers:
        if not info.compressible:
            continue
        module = model.get_submodule(info.name)
        names = applicable_methods(module)
        if config.methods is not None:
            names = [n for n in names if n in config.methods]
        else:
            names = [n for n in names if get_method(n).in_default_search]
        if info.name == last:
            names = [n for n in names if n != "prune"]
        if not names:
            continue
        seeds: dict[str, tuple[int, ...]] = {}
        raw: dict[str, tuple[int, ...]] = {}
        for name in names:
            method = get_method(name)
            estimate = method.seed_ranks(module)
            limits = method.max_ranks(module)
            raw[name] = estimate
            seeds[name] = tuple(
                clamp_rank(r, m, floor=max(1, math.ceil(config.min_rank_fraction * m)))
                for r, m in zip(estimate, limits)
            )
        spaces.append(LayerSpace(info.name, (KEEP, *names), seeds, raw))
    return spaces


def plan_from_params(
    model: nn.Module, spaces: list[LayerSpace], params: Mapping[str, Any], config: SearchConfig
) -> Plan:
    """Turn a trial's parameters into a plan: EVBMF ranks times the layer's scale, rounded."""
    choices = {}
    for space in spaces:
        method_name = params.get(space.method_param, KEEP)
        if method_name == KEEP:
            continue
        scale = float(params.get(space.scale_param, 1.0))
        method = get_method(method_name)
        module = model.get_submodule(space.name)
        ranks = method.scaled_ranks(
            module, space.seed_ranks[method_name], scale, multiple=config.rank_multiple
        )
        choices[space.name] = Choice(method_name, ranks)
    return Plan(choices)


def default_method(space: LayerSpace) -> str:
    """Tucker-2 for spatial kernels, SVD for matrices and 1x1 convs (Kim et al.'s recipe)."""
    for name in ("tucker2", "svd"):
        if name in space.methods:
            return name
    return space.methods[1] if len(space.methods) > 1 else KEEP


def output_layer(spaces: list[LayerSpace], layers: list[LayerInfo]) -> str | None:
    """The last layer the forward pass reaches (None when it is the only searchable one)."""
    reached = [info.name for info in layers if info.macs > 0]
    return reached[-1] if reached and len(spaces) > 1 else None


def small_layers(
    spaces: list[LayerSpace], layers: list[LayerInfo], config: SearchConfig
) -> set[str]:
    """Searchable layers under ``config.seed_min_share`` of the model's cost (by the
    objective's metric; parameters for latency)."""
    metric = "macs" if config.objective == "macs" else "params"
    by_name = {info.name: info for info in layers}
    total = sum(getattr(info, metric) for info in layers) or 1
    return {
        space.name
        for space in spaces
        if getattr(by_name[space.name], metric) < config.seed_min_share * total
    }


def scale_within(scanned: Sequence[tuple[float, float]], budget: float) -> float | None:
    """The smallest scanned rank scale whose accuracy drop is within ``budget`` points."""
    fine = [scale for scale, drop in scanned if drop <= budget and math.isfinite(drop)]
    return min(fine) if fine else None


def evbmf_params(
    spaces: list[LayerSpace], layers: list[LayerInfo], config: SearchConfig
) -> dict[str, Any]:
    """Kim et al.'s plan as trial parameters: every layer at its EVBMF rank with Tucker-2 on
    spatial convs and SVD elsewhere, the output layer dense (the first seed, see
    :func:`seed_trials`)."""
    output = output_layer(spaces, layers)
    unit = min(max(1.0, config.rank_scale[0]), config.rank_scale[1])
    params: dict[str, Any] = {}
    for space in spaces:
        params[space.method_param] = KEEP if space.name == output else default_method(space)
        params[space.scale_param] = unit
    return params


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
    2. ``evbmf-cp-where-cheaper``: the same, with CP wherever CP at its EVBMF-derived rank costs
       less than Tucker-2 (by the search objective's cost, parameters for latency);
    3. ``sensitivity-<b>pt`` for each budget ``b`` in ``config.sensitivity_budgets`` (given
       ``sensitivity``, see :mod:`worker.search._sensitivity`): every scanned layer at the
       smallest rank scale whose solo drop before fine-tuning is within ``b`` points (dense
       when none is); identical plans are enqueued once;
    4. ``evbmf-tucker2-x<f>``: the first at 0.5x and 1.5x the EVBMF ranks (those inside
       ``rank_scale``);
    5. with ``speedups`` (latency objective, see :mod:`worker.search._layer_latency`):
       ``latency-fastest``, every layer with its fastest method when that beats the dense
       layer, dense otherwise; and seeds 2 to 4 keep dense every layer whose method was
       measured slower than the dense layer.

    The output layer (the last one the forward pass reaches) stays dense in every seed, as in
    Kim et al.: its EVBMF rank is often below the number of classes. Seeds 2 to 4 also keep
    dense every layer whose share of the model's cost is below ``config.seed_min_share``
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
