"""CP factorised convolution: 1x1 → depthwise kx1 → depthwise 1xk → 1x1 (Lebedev et al., 2015)."""

from __future__ import annotations

import torch
from torch import nn

from tensorops.decompositions import cp_als
from tensorops.layers._geometry import ConvGeometry, pointwise
from tensorops.layers._validation import plain_conv_layout


class CPConv2d(nn.Module):
    """A conv whose 4-D kernel is a sum of ``rank`` rank-one terms.

    The vertical depthwise conv carries the height part of stride, padding and dilation and the
    horizontal one the width part; since each acts on one axis only, the split is exact for every
    padding mode.
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
        self.first = pointwise(in_channels, rank, bias=False, device=device, dtype=dtype)
        self.vertical = geometry.axis(0).conv(rank, rank, groups=rank, device=device, dtype=dtype)
        self.horizontal = geometry.axis(1).conv(rank, rank, groups=rank, device=device, dtype=dtype)
        self.last = pointwise(rank, out_channels, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.horizontal(self.vertical(self.first(x))))

    @classmethod
    def skeleton(cls, conv: nn.Conv2d, rank: int) -> CPConv2d:
        """The layer's structure for ``conv`` at ``rank``, weights uninitialised."""
        in_channels, out_channels, geometry, options = plain_conv_layout(conv, "cp")
        return cls(in_channels, out_channels, rank, geometry, **options)

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, rank: int, *, seed: int = 0, n_iter_max: int = 100, tol: float = 1e-7
    ) -> CPConv2d:
        """Factorise ``conv``'s kernel by CP-ALS at ``rank`` (seeded, deterministic)."""
        layer = cls.skeleton(conv, rank)
        result = cp_als(conv.weight, layer.rank, seed=seed, n_iter_max=n_iter_max, tol=tol)
        out_factor, in_factor, h_factor, w_factor = result.factors
        with torch.no_grad():
            layer.first.weight.copy_(in_factor.T[:, :, None, None])  # (R, in, 1, 1)
            layer.vertical.weight.copy_(h_factor.T[:, None, :, None])  # (R, 1, kh, 1)
            layer.horizontal.weight.copy_(w_factor.T[:, None, None, :])  # (R, 1, 1, kw)
            scaled = out_factor * result.weights  # fold the weights into the last factor
            layer.last.weight.copy_(scaled[:, :, None, None])  # (out, R, 1, 1)
            if conv.bias is not None and layer.last.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer
