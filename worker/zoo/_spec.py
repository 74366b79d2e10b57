"""Rebuilding an architecture from the JSON spec stored with a checkpoint.

A spec is ``{"arch": "<prefix>:<name>", "kwargs": {...}}`` with plain JSON keyword values.
:func:`build_from_spec` is the ``rankopt.architectures`` entry point.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from torch import nn

from worker.zoo._errors import ModelSpecError
from worker.zoo._registry import build_model
from worker.zoo._validation import non_json_paths

_SPEC_KEYS = frozenset({"arch", "kwargs"})


def build_from_spec(
    spec: Mapping[str, Any], *, allowed_factories: Collection[str] = ()
) -> nn.Module:
    """Build the untrained architecture described by ``spec``.

    ``spec["arch"]`` is a name for :func:`get_model`; ``spec["kwargs"]`` (optional) maps
    keyword names to plain JSON values (``None``, bool, int, finite float, str, list, dict).

    Raises:
        ModelSpecError: ``spec`` is not such a mapping, or a kwarg is unknown or not plain JSON.
        UnknownModelError: ``arch`` is not in the zoo.
        ModelNotAllowedError: ``arch`` is a factory missing from ``allowed_factories``.
    """
    if not isinstance(spec, Mapping):
        raise ModelSpecError(f"architecture spec must be a mapping, got {type(spec).__name__}")
    extra = sorted(map(str, set(spec) - _SPEC_KEYS))
    if extra:
        raise ModelSpecError(f"architecture spec has unknown key(s) {extra}; expected arch, kwargs")
    arch = spec.get("arch")
    if not isinstance(arch, str) or not arch:
        raise ModelSpecError(f"architecture spec 'arch' must be a non-empty str, got {arch!r}")
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise ModelSpecError(
            f"architecture spec 'kwargs' must be a mapping, got {type(kwargs).__name__}"
        )
    bad_names = sorted(repr(k) for k in kwargs if not isinstance(k, str) or not k.isidentifier())
    if bad_names:
        raise ModelSpecError(f"{arch}: kwargs names must be identifiers, got {bad_names}")
    bad_values = non_json_paths(dict(kwargs), "kwargs")
    if bad_values:
        raise ModelSpecError(f"{arch}: kwargs must be plain JSON values; not so: {bad_values}")
    return build_model(arch, kwargs, allowed_factories=allowed_factories)
