"""Operator-installed model factories given as ``"package.module:function"``.

Importing a module runs its code, so a factory is resolved only when its exact string is in
the operator's allow-list (:data:`service.names.ALLOWED_FACTORIES_ENV`); nothing else
about the string is trusted.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from typing import Any

from torch import nn

from service.names import ALLOWED_FACTORIES_ENV, FACTORY_RE
from worker.zoo._errors import ModelNotAllowedError, ModelSpecError, UnknownModelError

#: The setting that holds the allow-list (kept under this name for callers of the zoo).
ALLOW_LIST_SETTING = ALLOWED_FACTORIES_ENV


def is_factory_spec(spec: str) -> bool:
    """Whether ``spec`` has the ``"package.module:function"`` form (says nothing of trust)."""
    return FACTORY_RE.fullmatch(spec) is not None


def resolve_factory(spec: str, allowed: Collection[str]) -> Callable[..., nn.Module]:
    """Import and return the callable named by ``spec`` (``"package.module:function"``).

    Raises :class:`ModelNotAllowedError` unless ``spec`` is exactly one of ``allowed``; the
    allow-list is checked before anything is imported. Raises :class:`UnknownModelError` when
    an allowed spec cannot be imported or does not name a callable.
    """
    if isinstance(allowed, str):
        # A str is a Collection[str] whose `in` matches substrings: never an allow-list.
        raise TypeError("allowed must be a collection of factory strings, not one str")
    if spec not in allowed:
        listed = ", ".join(sorted(allowed)) or "nothing"
        raise ModelNotAllowedError(
            f"model factory {spec!r} is not allowed; the operator setting {ALLOW_LIST_SETTING} "
            f"allows {listed}"
        )
    if not is_factory_spec(spec):
        raise ModelSpecError(f"model factory {spec!r} is not of the form 'package.module:function'")
    module_name, _, qualname = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for attr in qualname.split("."):
            target = getattr(target, attr)
    except (ImportError, AttributeError) as err:
        raise UnknownModelError(
            f"allowed model factory {spec!r} cannot be resolved: {err}"
        ) from err
    if not callable(target):
        raise UnknownModelError(f"allowed model factory {spec!r} is not callable")
    factory: Callable[..., nn.Module] = target
    return factory
