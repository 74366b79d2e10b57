"""Registry of decomposition methods: a plain dict behind three functions."""

from __future__ import annotations

from torch import nn

from tensorops._types import KEEP
from tensorops.exceptions import PlanError
from tensorops.methods._base import DecompositionMethod

_METHODS: dict[str, DecompositionMethod] = {}


def register_method(method: DecompositionMethod, *, replace: bool = False) -> DecompositionMethod:
    """Add ``method`` under its name; an existing name is only replaced with ``replace=True``."""
    name = method.name
    if name == KEEP:
        raise ValueError(f"{KEEP!r} is reserved for leaving a layer dense")
    if name in _METHODS and not replace:
        raise ValueError(f"a decomposition method named {name!r} is already registered")
    _METHODS[name] = method
    return method


def get_method(name: str) -> DecompositionMethod:
    """The registered method called ``name``; :class:`PlanError` lists the known names if none."""
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS)) or "none"
        raise PlanError(f"unknown decomposition method {name!r}; registered: {known}") from None


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return sorted(_METHODS)


def applicable_methods(module: nn.Module) -> list[str]:
    """Names of the registered methods that can factorise ``module``."""
    return [name for name in list_methods() if _METHODS[name].applies(module)]


def refusal_reason(module: nn.Module) -> str | None:
    """None if some method applies to ``module``, else the reasons, one per method."""
    if applicable_methods(module):
        return None
    reasons = {_METHODS[name].refusal(module) for name in list_methods()}
    return "; ".join(sorted(r for r in reasons if r)) or "no decomposition method is registered"
