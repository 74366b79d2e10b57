"""Per-layer speed of each decomposition against the dense layer, for the latency objective.

A factorised layer has fewer MACs but more, thinner operations; on a CPU at batch 1 (small
channels, depthwise convs, per-call overhead) it can run slower than the dense layer it
replaces. Before seeding a latency search, every searchable layer is timed alone on the
input it really receives (captured with a forward hook on the latency batch), dense against
each applicable method at its EVBMF seed ranks, interleaved (:func:`measure_speedup`). The
seed plans then keep dense every layer whose method was measured slower, so that the first
trials the sampler learns from already avoid the slow factorisations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from tensorops import Choice, Plan, compress
from worker.search._latency import measure_speedup
from worker.search._space import LayerSpace

logger = logging.getLogger(__name__)


def capture_inputs(
    model: nn.Module, names: Iterable[str], example: torch.Tensor, device: torch.device
) -> dict[str, torch.Tensor]:
    """The first input each named layer receives when ``model`` runs ``example``."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:

        def hook(_module: nn.Module, args: tuple[object, ...], name: str = name) -> None:
            if name not in captured and args and isinstance(args[0], torch.Tensor):
                captured[name] = args[0].detach().clone()

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        model.to(device).eval()
        with torch.inference_mode():
            model(example.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return captured


def layer_speedups(
    model: nn.Module,
    spaces: list[LayerSpace],
    example: torch.Tensor,
    *,
    device: torch.device,
    repeats: int,
    seed: int = 0,
    cache: dict[tuple[object, ...], object] | None = None,
) -> dict[str, dict[str, float]]:
    """``{layer: {method: speed-up over the dense layer}}`` at each method's seed ranks.

    A speed-up below 1 means the factorised layer is slower than the dense one.
    """
    inputs = capture_inputs(model, [s.name for s in spaces], example, device)
    store = cache if cache is not None else {}
    out: dict[str, dict[str, float]] = {}
    for space in spaces:
        x = inputs.get(space.name)
        if x is None:
            continue
        dense = model.get_submodule(space.name)
        speeds: dict[str, float] = {}
        for name in space.methods[1:]:
            ranks = space.seed_ranks[name]
            # Through compress and the search's cache, as the sensitivity scan does: a trial
            # that uses the same ranks reuses this decomposition instead of repeating it.
            plan = Plan({space.name: Choice(name, ranks)})
            layer = compress(model, plan, seed=seed, cache=store).get_submodule(space.name)
            speeds[name] = measure_speedup(dense, layer, x, device=device, repeats=repeats)
            logger.debug(
                "%s %s%s: %.2fx the dense layer's speed", space.name, name, ranks, speeds[name]
            )
        out[space.name] = speeds
    model.to("cpu")
    slow = sorted(f"{n}:{m}" for n, s in out.items() for m, v in s.items() if v < 1.0)
    if slow:
        logger.info("factorised layers slower than dense at their seed ranks: %s", ", ".join(slow))
    return out
