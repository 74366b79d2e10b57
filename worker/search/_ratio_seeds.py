"""Seed plans that span the compression axis: the best predicted plan at each target ratio.

The accuracy-budget seeds (``sensitivity-<b>pt``) take every layer at the smallest rank scale
whose *solo drop before fine-tuning* stays within a budget of a few points. Fine-tuning
recovers most of that drop, so those seeds cluster at low compression and the search rarely
travels far enough along the compression axis to use the tolerance.

Here, for each target ratio ``r`` in ``config.ratio_targets`` (2x, 4x, 8x, ... of the
objective's cost, parameters for latency), per-layer ranks are allocated greedily from the
same per-layer sensitivity curves, the way greedy compression-ratio selection works (AIMET's
"greedy" mode, for one): starting from the dense model, repeatedly take the one step, on any
layer, from its current option to a cheaper one that costs the fewest predicted points of
accuracy per unit of cost saved, until the plan's cost is at most ``1/r`` of the original's.
A target that no allocation reaches (every scanned layer at its cheapest scanned rank) ends
the list. Predicted drops are summed over layers, an approximation that is good enough to
order the candidates; the trials measure the truth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from tensorops import KEEP, LayerInfo, get_method
from worker.search._config import SearchConfig
from worker.search._space import LayerSpace, default_method

__all__ = ["ratio_seeds"]


@dataclass(frozen=True)
class _Option:
    cost: float
    drop: float  # predicted points lost, >= 0
    scale: float | None  # None: dense


def _options(
    model: nn.Module,
    space: LayerSpace,
    info: LayerInfo,
    scanned: Sequence[tuple[float, float]],
    metric: str,
    config: SearchConfig,
) -> list[_Option]:
    """The layer's dense option and every scanned scale that is cheaper, dearest first."""
    method_name = default_method(space)
    dense = float(getattr(info, metric))
    options = [_Option(dense, 0.0, None)]
    if method_name == KEEP:
        return options
    method = get_method(method_name)
    module = model.get_submodule(space.name)
    for scale, drop in scanned:
        if not math.isfinite(drop):
            continue
        ranks = method.scaled_ranks(
            module, space.seed_ranks[method_name], scale, multiple=config.rank_multiple
        )
        cost = float(getattr(method.cost(info, ranks), metric))
        if cost < dense:
            options.append(_Option(cost, max(drop, 0.0), scale))
    options.sort(key=lambda o: -o.cost)
    return options


def _allocate(options: Mapping[str, list[_Option]], total: float, budget: float) -> dict[str, int]:
    """Greedy allocation (module doc): an option index per layer; empty when out of reach."""
    chosen = dict.fromkeys(options, 0)
    cost = total
    while cost > budget:
        best: tuple[float, str, int, float] | None = None
        for name, opts in options.items():
            here = opts[chosen[name]]
            for j in range(chosen[name] + 1, len(opts)):
                saved = here.cost - opts[j].cost
                if saved <= 0:
                    continue
                rate = (max(opts[j].drop - here.drop, 0.0) + 1e-9) / saved
                if best is None or rate < best[0]:
                    best = (rate, name, j, saved)
        if best is None:
            return {}
        _, name, j, saved = best
        chosen[name] = j
        cost -= saved
    return chosen


def ratio_seeds(
    model: nn.Module,
    spaces: list[LayerSpace],
    layers: list[LayerInfo],
    config: SearchConfig,
    sensitivity: Mapping[str, Sequence[tuple[float, float]]],
) -> list[tuple[str, dict[str, Any]]]:
    """``ratio-<r>x`` seeds, one per reachable target in ``config.ratio_targets`` (module doc).

    Layers without a sensitivity curve (the output layer, layers under ``seed_min_share`` of
    the cost) stay dense, as in the other seeds.
    """
    metric = "macs" if config.objective == "macs" else "params"
    by_name = {info.name: info for info in layers}
    total = float(sum(getattr(info, metric) for info in layers))
    if total <= 0:
        return []
    options = {
        space.name: _options(
            model, space, by_name[space.name], sensitivity[space.name], metric, config
        )
        for space in spaces
        if sensitivity.get(space.name)
    }
    unit = min(max(1.0, config.rank_scale[0]), config.rank_scale[1])
    seeds: list[tuple[str, dict[str, Any]]] = []
    for target in sorted(config.ratio_targets):
        chosen = _allocate(options, total, total / target)
        if not chosen:
            break
        params: dict[str, Any] = {}
        for space in spaces:
            index = chosen.get(space.name, 0)
            option = options[space.name][index] if space.name in options else None
            if option is None or option.scale is None:
                params[space.method_param] = KEEP
                params[space.scale_param] = unit
            else:
                params[space.method_param] = default_method(space)
                params[space.scale_param] = option.scale
        if all(params != other for _, other in seeds):
            seeds.append((f"ratio-{target:g}x", params))
    return seeds
