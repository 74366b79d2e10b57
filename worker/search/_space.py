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
