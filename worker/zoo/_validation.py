"""Checks on user-supplied values shared by the registry and the networks."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from worker.zoo._errors import ModelSpecError


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) of at least 1, else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelSpecError(f"{name} must be a positive int, got {value!r}")
    return value


def non_json_paths(value: Any, path: str) -> list[str]:
    """Dotted paths inside ``value`` that are not plain JSON (``None``, bool, int, finite
    float, str, list, dict with str keys). Empty when ``value`` is plain."""
    if value is None or isinstance(value, (bool, int, str)):
        return []
    if isinstance(value, float):
        return [] if math.isfinite(value) else [path]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in non_json_paths(item, f"{path}[{i}]")]
    if isinstance(value, Mapping):
        bad: list[str] = []
        for key, item in value.items():
            if not isinstance(key, str):
                bad.append(f"{path}[{key!r}]")
            else:
                bad.extend(non_json_paths(item, f"{path}.{key}"))
        return bad
    return [path]


def call_factory(name: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> nn.Module:
    """Call ``factory(**kwargs)`` for the architecture ``name``, turning bad keyword arguments
    into a :class:`ModelSpecError` that names them, and checking a module comes back."""
    accepted = _accepted_keywords(factory)
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise ModelSpecError(
                f"{name} does not accept keyword argument(s) {unknown}; "
                f"it accepts {sorted(accepted)}"
            )
    try:
        model = factory(**kwargs)
    except TypeError as err:
        # Factories taking **kwargs (torchvision's) pass them on to a constructor; only the
        # constructor knows which names it takes.
        if "keyword argument" not in str(err):
            raise
        raise ModelSpecError(f"bad keyword argument(s) for {name}: {err}") from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _accepted_keywords(factory: Callable[..., Any]) -> set[str] | None:
    """Names ``factory`` accepts by keyword, or ``None`` when it takes ``**kwargs`` or has no
    readable signature."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    keyword_kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name for p in params if p.kind in keyword_kinds}
