"""Checks that a dense layer can be factorised, with reasons a user can act on."""

from __future__ import annotations

from typing import Any

from torch import nn

from tensorops.exceptions import NotCompressibleError
from tensorops.layers._geometry import ConvGeometry


def conv_refusal(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot be factorised, or None when it can."""
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__} is not a plain nn.Conv2d"
    return groups_refusal(conv)


def groups_refusal(conv: nn.Conv2d | nn.Conv1d) -> str | None:
    """Why a grouped or depthwise ``conv`` cannot be factorised, or None when groups == 1."""
    if conv.groups != 1:
        kind = "depthwise" if conv.groups == conv.in_channels else "grouped"
        return (
            f"{kind} convolution (groups={conv.groups}) is not decomposed: its kernel has no "
            "shared channel modes to factorise"
        )
    return None


def require_plain_conv(conv: nn.Module, method: str) -> None:
    reason = conv_refusal(conv)
    if reason is not None:
        raise NotCompressibleError(f"{method} cannot factorise this layer: {reason}")


def require_linear(layer: nn.Module, method: str) -> None:
    if type(layer) is not nn.Linear:
        raise NotCompressibleError(
            f"{method} cannot factorise this layer: {type(layer).__name__} is not a plain nn.Linear"
        )


def plain_conv_layout(
    conv: nn.Module, method: str
) -> tuple[int, int, ConvGeometry, dict[str, Any]]:
    """Channels, geometry and the (bias, device, dtype) options a factorised copy of ``conv`` keeps.

    Raises :class:`NotCompressibleError` when ``method`` cannot factorise ``conv``.
    """
    require_plain_conv(conv, method)
    assert isinstance(conv, nn.Conv2d)
    options = {
        "bias": conv.bias is not None,
        "device": conv.weight.device,
        "dtype": conv.weight.dtype,
    }
    return conv.in_channels, conv.out_channels, ConvGeometry.of(conv), options
