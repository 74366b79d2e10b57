"""The geometry of a Conv2d (stride, padding, dilation, padding mode), split per axis."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

Padding = tuple[int, int] | str


@dataclass(frozen=True)
class ConvGeometry:
    """Everything about a Conv2d except its channel counts and weights."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: Padding = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    padding_mode: str = "zeros"

    @classmethod
    def of(cls, conv: nn.Conv2d) -> ConvGeometry:
        padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
        return cls(
            kernel_size=_pair(conv.kernel_size),
            stride=_pair(conv.stride),
            padding=padding,
            dilation=_pair(conv.dilation),
            padding_mode=conv.padding_mode,
        )

    def axis(self, axis: int) -> ConvGeometry:
        """The same convolution restricted to one spatial axis (0 = height, 1 = width).

        The other axis gets kernel 1, stride 1, no padding and dilation 1, so applying the
        height part then the width part reproduces the original sampling pattern exactly.
        """

        def pick(pair: tuple[int, int], neutral: int) -> tuple[int, int]:
            return (pair[0], neutral) if axis == 0 else (neutral, pair[1])

        padding: Padding = self.padding if isinstance(self.padding, str) else pick(self.padding, 0)
        return ConvGeometry(
            kernel_size=pick(self.kernel_size, 1),
            stride=pick(self.stride, 1),
            padding=padding,
            dilation=pick(self.dilation, 1),
            padding_mode=self.padding_mode,
        )

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        *,
        groups: int = 1,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> nn.Conv2d:
        """A new Conv2d with this geometry."""
        return nn.Conv2d(
            in_channels,
            out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=groups,
            bias=bias,
            padding_mode=self.padding_mode,  # type: ignore[arg-type]
            device=device,
            dtype=dtype,
        )


def pointwise(
    in_channels: int,
    out_channels: int,
    *,
    bias: bool,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> nn.Conv2d:
    """A plain 1x1 convolution."""
    return ConvGeometry(kernel_size=(1, 1)).conv(
        in_channels, out_channels, bias=bias, device=device, dtype=dtype
    )


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))
