"""Every torchvision classification model, under the ``torchvision:`` prefix.

Resolved lazily: torchvision is imported on first use, not when the zoo is imported, and no
registry entry is made per model. Models are always built with ``weights=None`` (nothing is
downloaded); load a state dict afterwards for trained weights.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from torch import nn

from worker.zoo._errors import ModelSpecError
from worker.zoo._validation import call_factory, check_positive_int

PREFIX = "torchvision"

# Builders whose defaults do not suit training from scratch: auxiliary heads change what
# forward returns in train mode, and their own init is slow (scipy truncnorm) and warns.
_QUIRKS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}
_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {"inception_v3": (3, 299, 299)}
_DEFAULT_INPUT_SHAPE = (3, 224, 224)


@functools.cache
def names() -> tuple[str, ...]:
    """Bare names (no prefix) of torchvision's classification models, sorted."""
    import torchvision

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def has(name: str) -> bool:
    """Whether ``name`` (bare) is a torchvision classification model."""
    return name in names()


def input_shape(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input size torchvision documents for ``name`` (bare)."""
    return _INPUT_SHAPES.get(name, _DEFAULT_INPUT_SHAPE)


def build(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Build the torchvision model ``name`` (bare, must satisfy :func:`has`) untrained.

    ``num_classes`` defaults to 1000; the quirk defaults above may be overridden by ``kwargs``.
    """
    import torchvision

    if "weights" in kwargs:
        raise ModelSpecError(
            f"torchvision:{name}: 'weights' cannot be given; models are built with weights=None "
            "(nothing is downloaded), load a state dict for trained weights"
        )
    config: dict[str, Any] = {"num_classes": 1000, **_QUIRKS.get(name, {}), **kwargs}
    check_positive_int("num_classes", config["num_classes"])

    def builder(**options: Any) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, **options)

    return call_factory(f"{PREFIX}:{name}", builder, config)
