"""Low-rank (truncated SVD) layers: a Linear as two thin Linears, a Conv2d as conv → 1x1."""

from __future__ import annotations

import torch
from torch import nn

from tensorops.decompositions import truncated_svd
from tensorops.layers._geometry import ConvGeometry, pointwise
from tensorops.layers._validation import plain_conv_layout, require_linear


class LowRankLinear(nn.Module):
    """``Linear(in, out)`` as ``Linear(in, rank, bias=False)`` then ``Linear(rank, out)``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.rank = int(rank)
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.last = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.first(x))

    @classmethod
    def skeleton(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        require_linear(linear, "svd")
        return cls(
            linear.in_features,
            linear.out_features,
            rank,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """Factorise ``linear.weight`` (out, in) by truncated SVD at ``rank``."""
        layer = cls.skeleton(linear, rank)
        result = truncated_svd(linear.weight, layer.rank)
        with torch.no_grad():
            layer.first.weight.copy_(result.right)  # (rank, in)
            layer.last.weight.copy_(result.left)  # (out, rank)
            if linear.bias is not None and layer.last.bias is not None:
                layer.last.bias.copy_(linear.bias)
        return layer


class LowRankConv2d(nn.Module):
    """A conv (in→out, kxk) as a kxk conv (in→rank) then a 1x1 conv (rank→out).

    The kernel is treated as an (out, in·kh·kw) matrix; for a 1x1 conv this is the low-rank
    pointwise convolution. Stride, padding, dilation and padding mode sit on the first conv;
    the bias is added by the last one, so padded borders stay exact.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int,
        geometry: ConvGeometry,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.rank = int(rank)
        self.first = geometry.conv(in_channels, rank, device=device, dtype=dtype)
        self.last = pointwise(rank, out_channels, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.first(x))

    @classmethod
    def skeleton(cls, conv: nn.Conv2d, rank: int) -> LowRankConv2d:
        in_channels, out_channels, geometry, options = plain_conv_layout(conv, "svd")
        return cls(in_channels, out_channels, rank, geometry, **options)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int) -> LowRankConv2d:
        """Factorise the (out, in·kh·kw) matrix of ``conv``'s kernel at ``rank``."""
        layer = cls.skeleton(conv, rank)
        out_ch = conv.out_channels
        result = truncated_svd(conv.weight.reshape(out_ch, -1), layer.rank)
        with torch.no_grad():
            layer.first.weight.copy_(result.right.reshape(layer.first.weight.shape))
            layer.last.weight.copy_(result.left[:, :, None, None])
            if conv.bias is not None and layer.last.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer
