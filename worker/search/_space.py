"""The search space: per compressible layer, a method (MTD) and a rank scale around EVBMF.

Parameter names are stable and readable: ``<layer>.method`` and ``<layer>.rank_scale``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
    """EVBMF-seeded choices for every compressible layer of ``model``."""
    spaces = []
    for info in layers:
        if not info.compressible:
            continue
        module = model.get_submodule(info.name)
        names = applicable_methods(module)
        if config.methods is not None:
            names = [n for n in names if n in config.methods]
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


def _default_method(space: LayerSpace) -> str:
    """Tucker-2 for spatial kernels, SVD for matrices and 1x1 convs (Kim et al.'s recipe)."""
    for name in ("tucker2", "svd"):
        if name in space.methods:
            return name
    return space.methods[1] if len(space.methods) > 1 else KEEP


def seed_trials(
    model: nn.Module, spaces: list[LayerSpace], layers: list[LayerInfo], config: SearchConfig
) -> list[tuple[str, dict[str, Any]]]:
    """The EVBMF plans enqueued before the sampler takes over, each with a label.

    1. ``evbmf-tucker2``: Tucker-2 at the EVBMF ranks on every spatial conv, SVD elsewhere;
    2. ``evbmf-cp-where-cheaper``: the same, with CP wherever CP at its EVBMF-derived rank costs
       less than Tucker-2 (by the search objective's cost, parameters for latency);
    3. scaled variants of the first at 0.5x, 0.75x and 1.5x the EVBMF ranks.

    The output layer (the last one the forward pass reaches) stays dense in every seed, as in
    Kim et al.: its EVBMF rank is often below the number of classes. The sampler may still
    decompose it.
    """
    by_name = {info.name: info for info in layers}
    metric = "macs" if config.objective == "macs" else "params"
    tucker: dict[str, Any] = {}
    mixed: dict[str, Any] = {}
    reached = [info.name for info in layers if info.macs > 0]
    output_layer = reached[-1] if reached else None
    for space in spaces:
        default = KEEP if space.name == output_layer and len(spaces) > 1 else _default_method(space)
        tucker[space.method_param] = default
        tucker[space.scale_param] = min(max(1.0, config.rank_scale[0]), config.rank_scale[1])
        choice = default
        if "cp" in space.methods and default == "tucker2":
            info = by_name[space.name]
            cp_cost = getattr(get_method("cp").cost(info, space.seed_ranks["cp"]), metric)
            tucker_cost = getattr(
                get_method("tucker2").cost(info, space.seed_ranks["tucker2"]), metric
            )
            if cp_cost < tucker_cost:
                choice = "cp"
        mixed[space.method_param] = choice
        mixed[space.scale_param] = tucker[space.scale_param]
    low, high = config.rank_scale
    seeds: list[tuple[str, dict[str, Any]]] = [("evbmf-tucker2", tucker)]
    if mixed != tucker:
        seeds.append(("evbmf-cp-where-cheaper", mixed))
    for factor in (0.5, 0.75, 1.5):
        if low <= factor <= high:
            scaled = {k: (factor if k.endswith(".rank_scale") else v) for k, v in tucker.items()}
            seeds.append((f"evbmf-tucker2-x{factor:g}", scaled))
    return seeds
