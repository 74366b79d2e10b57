"""The name → architecture registry: a plain dict behind :func:`register_model`,
:func:`get_model`, :func:`list_models` and :func:`input_shape`.

Names are ``"<prefix>:<name>"``. ``rankopt:`` entries are registered by the modules that
define them; ``torchvision:`` names are resolved lazily by :mod:`worker.zoo._torchvision`; any
other ``"package.module:function"`` string is an operator factory, built only when allowed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from worker.zoo import _torchvision
from worker.zoo._errors import ModelNotAllowedError, UnknownModelError
from worker.zoo._factories import ALLOW_LIST_SETTING, is_factory_spec, resolve_factory
from worker.zoo._validation import call_factory

F = TypeVar("F", bound=Callable[..., nn.Module])

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*:[A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]  # (C, H, W), (C, L) or (F,): what the architecture documents


_MODELS: dict[str, _Entry] = {}


def register_model(name: str, *, input_shape: tuple[int, ...]) -> Callable[[F], F]:
    """Decorator registering a model factory (function or class) under ``name``.

    ``name`` is ``"<prefix>:<name>"``; ``input_shape`` is the input of one example the
    architecture is documented for: (C, H, W) images, (C, L) sequences or (F,) feature vectors.
    The ``torchvision`` prefix is reserved.
    """
    if _NAME_RE.fullmatch(name) is None:
        raise ValueError(f"model name {name!r} is not of the form '<prefix>:<name>'")
    if name.startswith(f"{_torchvision.PREFIX}:"):
        raise ValueError(f"model name {name!r}: the prefix {_torchvision.PREFIX!r} is reserved")
    if name in _MODELS:
        raise ValueError(f"model name {name!r} is already registered")
    bad_shape = ValueError(
        "input_shape must be one to three positive ints ((C, H, W), (C, L) or (F,)), "
        f"got {input_shape!r}"
    )
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise bad_shape from None
    if not 1 <= len(shape) <= 3 or any(
        isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape
    ):
        raise bad_shape

    def wrap(factory: F) -> F:
        _MODELS[name] = _Entry(factory, shape)
        return factory

    return wrap


def list_models(*, prefix: str | None = None) -> list[str]:
    """Every model name the zoo can build, sorted; only those under ``prefix`` if given.

    Operator factories are not listed: they are not known until requested.
    """
    everything = [*_MODELS, *(f"{_torchvision.PREFIX}:{n}" for n in _torchvision.names())]
    if prefix is not None:
        everything = [n for n in everything if n.partition(":")[0] == prefix]
    return sorted(everything)


def input_shape(name: str) -> tuple[int, ...]:
    """The documented input of one example of the zoo architecture ``name``: (C, H, W) for image
    nets, (C, L) for 1-D CNNs, (F,) for MLPs on feature vectors.

    For ``rankopt:`` nets this is the default; building with another ``in_channels`` changes C.
    """
    if name in _MODELS:
        return _MODELS[name].input_shape
    prefix, _, bare = name.partition(":")
    if prefix == _torchvision.PREFIX and _torchvision.has(bare):
        return _torchvision.input_shape(bare)
    raise _unknown(name)


def documented_input(name: str) -> tuple[int, ...] | None:
    """:func:`input_shape` of a zoo architecture; ``None`` for any other name (an operator
    factory documents nothing)."""
    try:
        return input_shape(name)
    except UnknownModelError:
        return None


def get_model(name: str, /, *, allowed_factories: Collection[str] = (), **kwargs: Any) -> nn.Module:
    """Build the untrained architecture ``name`` with ``kwargs``.

    ``name`` is a zoo name (see :func:`list_models`) or an operator factory
    ``"package.module:function"``, which is imported only when it is in ``allowed_factories``.

    Raises:
        UnknownModelError: ``name`` is not in the zoo (the message lists close names).
        ModelNotAllowedError: ``name`` is a factory string missing from ``allowed_factories``.
        ModelSpecError: a keyword argument is unknown to the architecture or has a bad value.
    """
    return build_model(name, kwargs, allowed_factories=allowed_factories)


def build_model(
    name: str, kwargs: Mapping[str, Any], *, allowed_factories: Collection[str] = ()
) -> nn.Module:
    """:func:`get_model` with the keyword arguments as a mapping (any names allowed)."""
    if isinstance(allowed_factories, str):
        # A str is a Collection[str] whose `in` matches substrings: never an allow-list.
        raise TypeError("allowed_factories must be a collection of factory strings, not one str")
    if name in _MODELS:
        return call_factory(name, _MODELS[name].factory, kwargs)
    prefix, _, bare = name.partition(":")
    if prefix == _torchvision.PREFIX and _torchvision.has(bare):
        return _torchvision.build(bare, kwargs)
    if prefix in _zoo_prefixes() or not is_factory_spec(name):
        raise _unknown(name)
    if name not in allowed_factories:
        hint = _did_you_mean(name)
        raise ModelNotAllowedError(
            f"{name!r} is not a zoo model{hint} and not an allowed model factory; the operator "
            f"setting {ALLOW_LIST_SETTING} lists the allowed 'package.module:function' factories"
        )
    return call_factory(name, resolve_factory(name, allowed_factories), kwargs)


def _zoo_prefixes() -> set[str]:
    return {n.partition(":")[0] for n in _MODELS} | {_torchvision.PREFIX}


def _unknown(name: str) -> UnknownModelError:
    return UnknownModelError(
        f"unknown model {name!r}{_did_you_mean(name)}; list_models() gives every name"
    )


def _did_you_mean(name: str, limit: int = 5) -> str:
    """`` (did you mean 'a', 'b'?)`` for names close to ``name``, or ``""``.

    Compares the parts after the prefix, so ``"resnet18"`` finds ``"torchvision:resnet18"``
    and ``"rankop:lenet5"`` finds ``"rankopt:lenet5"``; names under the same prefix go first.
    """
    prefix, _, bare = name.rpartition(":")

    def closeness(candidate: str) -> tuple[float, float]:
        c_prefix, _, c_bare = candidate.partition(":")
        ratio = difflib.SequenceMatcher(None, bare, c_bare).ratio()
        return ratio, ratio + (0.1 if c_prefix == prefix else 0.0)

    scored = [(closeness(c), c) for c in list_models()]
    close = sorted((-rank, c) for (ratio, rank), c in scored if ratio >= 0.75)
    return f" (did you mean {', '.join(repr(c) for _, c in close[:limit])}?)" if close else ""
