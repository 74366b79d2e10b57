"""Applying a plan to a model: replace the chosen layers by factorised ones."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

from torch import nn

from tensorops._types import Cost, LayerInfo
from tensorops.exceptions import NotCompressibleError, PlanError
from tensorops.methods import BuildContext, get_method
from tensorops.plan import Choice, Plan

logger = logging.getLogger(__name__)


def _resolve(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise PlanError(f"plan names layer {name!r}, which is not in the model") from None


def _check(model: nn.Module, name: str, choice: Choice) -> tuple[nn.Module, tuple[int, ...]]:
    module = _resolve(model, name)
    method = get_method(choice.method)
    reason = method.refusal(module)
    if reason is not None:
        raise NotCompressibleError(f"layer {name!r} cannot use {choice.method}: {reason}")
    try:
        ranks = method.validate_ranks(module, choice.ranks)
    except ValueError as exc:
        raise type(exc)(f"layer {name!r}: {exc}") from None
    return module, ranks


def validate_plan(model: nn.Module, plan: Plan) -> None:
    """Raise a ``ValueError`` subclass naming the first bad layer, method or rank of ``plan``."""
    for name, choice in plan.items():
        if choice.keeps:
            _resolve(model, name)
        else:
            _check(model, name, choice)


def compress(
    model: nn.Module,
    plan: Plan,
    *,
    seed: int = 0,
    cache: dict[tuple[object, ...], object] | None = None,
    weights: bool = True,
) -> nn.Module:
    """A copy of ``model`` with every layer named in ``plan`` replaced; ``model`` is untouched.

    The whole plan is validated before any work starts. ``cache`` (any dict kept across calls
    on the same model) stores decompositions by (layer, method, ranks), so that repeated plans
    never decompose a layer twice. ``weights=False`` builds only the structure (for loading).
    """
    validate_plan(model, plan)
    result = copy.deepcopy(model)
    store = cache if cache is not None else {}
    for name, choice in plan.decomposed().items():
        original = result.get_submodule(name)
        method = get_method(choice.method)
        ranks = method.validate_ranks(original, choice.ranks)
        if not weights:
            replacement = method.skeleton(original, ranks)
        else:
            replacement = _decompose_cached(original, name, method.name, ranks, seed, store)
        _replace(result, name, replacement)
        logger.debug("replaced %s by %s%s", name, choice.method, ranks)
    return result


def _decompose_cached(
    module: nn.Module,
    name: str,
    method_name: str,
    ranks: tuple[int, ...],
    seed: int,
    cache: dict[tuple[object, ...], object],
) -> nn.Module:
    method = get_method(method_name)
    key = ("layer", name, method_name, ranks, seed)
    cached = cache.get(key)
    if isinstance(cached, dict):
        layer = method.skeleton(module, ranks)
        layer.load_state_dict(cached)
        return layer
    layer = method.decompose(module, ranks, BuildContext(layer_name=name, seed=seed, cache=cache))
    cache[key] = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    return layer


def _replace(model: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, replacement)


def estimate_cost(layers: Iterable[LayerInfo], plan: Plan, *, total: Cost) -> Cost:
    """Closed-form cost of the model after ``plan``, given its inventory and measured ``total``."""
    by_name = {info.name: info for info in layers}
    result = total
    for name, choice in plan.decomposed().items():
        info = by_name.get(name)
        if info is None:
            raise PlanError(f"plan names layer {name!r}, which is not in the inventory")
        new = get_method(choice.method).cost(info, choice.ranks)
        result = Cost(result.params - info.params + new.params, result.macs - info.macs + new.macs)
    return result
