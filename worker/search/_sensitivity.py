"""Per-layer sensitivity: how much accuracy one layer's decomposition costs before fine-tuning.

For every searchable layer (but the output layer and layers too small to matter), the model is
compressed at that layer only, with its default method (Tucker-2 for spatial convs, SVD for
matrices), at rank scales from ``rank_scale``'s top down a geometric grid, and evaluated on
(a prefix of) the validation split, without fine-tuning. The drops seed per-layer rank choices
(:func:`worker.search._space.seed_trials`): the smallest scale whose drop stays within a budget.
This is the classic sensitivity analysis of pruning work (Han et al. 2015), here on EVBMF-scaled
ranks; it costs a few evaluations per layer and no training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from tensorops import KEEP, Choice, LayerInfo, Plan, compress, get_method
from worker.data import DataBundle, DataSplits, materialize
from worker.search._config import SearchConfig, drop_points
from worker.search._space import LayerSpace, default_method, output_layer, small_layers
from worker.training import eval_indices, evaluate

logger = logging.getLogger(__name__)

Sensitivity = Mapping[str, Sequence[tuple[float, float]]]  # layer -> [(scale, drop in points)]

#: With ratio seeds, a layer's scan goes on until its solo drop passes this many points: the
#: ratio seeds need the curve's deep end, which fine-tuning largely recovers.
SCAN_STOP_POINTS = 30.0


def scale_grid(config: SearchConfig) -> list[float]:
    """``config.sensitivity_points`` scales, geometric over ``rank_scale``, highest first."""
    low, high = config.rank_scale
    n = config.sensitivity_points
    if n == 1 or low == high:
        return [high]
    ratio = (high / low) ** (1 / (n - 1))
    return [round(high / ratio**i, 4) for i in range(n)]


def layer_sensitivity(
    model: nn.Module,
    data: DataSplits | DataBundle,
    spaces: list[LayerSpace],
    layers: list[LayerInfo],
    config: SearchConfig,
    *,
    device: torch.device,
    cache: dict[tuple[object, ...], object] | None = None,
) -> dict[str, list[tuple[float, float]]]:
    """Accuracy drop (points) per layer and rank scale, each layer compressed alone.

    Scales are tried from the largest down and a layer's scan stops once its drop passes the
    largest seed budget (smaller ranks only do worse), or :data:`SCAN_STOP_POINTS` when
    ``config.ratio_targets`` asks for ratio seeds. Layers kept dense in every seed (the
    output layer, and those under ``seed_min_share`` of the cost) are skipped. The validation
    subset (at most ``sensitivity_samples`` examples) is decoded once and held in memory for
    the scan, whatever the size of the split.
    """
    started = time.perf_counter()
    n_val = len(data.val)
    n = min(n_val, config.sensitivity_samples, config.val_samples or n_val)
    # The search's fixed seeded validation subset (the whole split when it is smaller).
    idx = eval_indices(n_val, n if n < n_val else None, seed=config.seed)
    subset = materialize(data.val.select(idx.numpy()))
    base = evaluate(model, subset, device=device).accuracy
    model.to("cpu")
    limit = max(config.sensitivity_budgets)
    if config.ratio_targets:
        limit = max(limit, SCAN_STOP_POINTS)
    skip = small_layers(spaces, layers, config) | {output_layer(spaces, layers)}
    result: dict[str, list[tuple[float, float]]] = {}
    for space in spaces:
        method_name = default_method(space)
        if space.name in skip or method_name == KEEP:
            continue
        method = get_method(method_name)
        module = model.get_submodule(space.name)
        scanned: list[tuple[float, float]] = []
        for scale in scale_grid(config):
            ranks = method.scaled_ranks(
                module, space.seed_ranks[method_name], scale, multiple=config.rank_multiple
            )
            plan = Plan({space.name: Choice(method_name, ranks)})
            small = compress(model, plan, seed=config.seed, cache=cache)
            drop = drop_points(base, evaluate(small, subset, device=device).accuracy)
            scanned.append((scale, drop))
            if drop > limit:
                break
        result[space.name] = scanned
    logger.info(
        "sensitivity of %d layers on %d validation examples in %.1fs",
        len(result),
        n,
        time.perf_counter() - started,
    )
    return result
