"""BTD factorised convolution: 1x1 (in→R·r_in) → grouped kxk (R groups) → 1x1 (R·r_out→out)."""

from __future__ import annotations

import torch
from torch import nn

from tensorops.decompositions import btd
from tensorops.layers._geometry import ConvGeometry, pointwise
from tensorops.layers._validation import plain_conv_layout


class BTDConv2d(nn.Module):
    """A conv whose kernel is a sum of ``blocks`` Tucker-2 terms (block-term decomposition).

    The first 1x1 conv projects onto every block's input basis at once, the grouped kxk conv
    applies each block's core to its own ``r_in`` channels only (group ``b`` maps channels
    ``b·r_in …`` to ``b·r_out …``), and the last 1x1 conv sums the blocks back through their
    output bases and adds the bias. As in Tucker-2, stride, padding, dilation and padding mode sit
    on the kxk conv and the pointwise convs commute with padding, so the factorisation is exact
    for every geometry.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ranks: tuple[int, int, int],
        geometry: ConvGeometry,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        blocks, r_out, r_in = (int(r) for r in ranks)
        self.ranks = (blocks, r_out, r_in)
        self.first = pointwise(in_channels, blocks * r_in, bias=False, device=device, dtype=dtype)
        self.core = geometry.conv(
            blocks * r_in, blocks * r_out, groups=blocks, device=device, dtype=dtype
        )
        self.last = pointwise(blocks * r_out, out_channels, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))

    @classmethod
    def skeleton(cls, conv: nn.Conv2d, ranks: tuple[int, int, int]) -> BTDConv2d:
        """The layer's structure for ``conv`` at ``ranks = (blocks, r_out, r_in)``."""
        in_channels, out_channels, geometry, options = plain_conv_layout(conv, "btd")
        return cls(in_channels, out_channels, ranks, geometry, **options)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, ranks: tuple[int, int, int], *, seed: int = 0) -> BTDConv2d:
        """Factorise ``conv``'s kernel by BTD at ``ranks`` (seeded, deterministic)."""
        layer = cls.skeleton(conv, ranks)
        result = btd(conv.weight, layer.ranks, seed=seed)
        blocks, r_out, r_in = layer.ranks
        with torch.no_grad():
            # first: (R·r_in, in, 1, 1), rows (b, c) = V_b[:, c].
            layer.first.weight.copy_(
                result.in_factors.transpose(1, 2).reshape(-1, conv.in_channels)[:, :, None, None]
            )
            # core: (R·r_out, r_in, kh, kw), rows (b, a) = G_b[a].
            layer.core.weight.copy_(
                result.cores.reshape(blocks * r_out, r_in, *result.cores.shape[3:])
            )
            # last: (out, R·r_out, 1, 1), columns (b, a) = U_b[:, a].
            layer.last.weight.copy_(
                result.out_factors.transpose(0, 1).reshape(conv.out_channels, -1)[:, :, None, None]
            )
            if conv.bias is not None and layer.last.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer
