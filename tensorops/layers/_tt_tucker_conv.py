"""TT-Tucker convolution: Tucker-2 on the channel modes with the core in TT format.

Tucker-2 gives ``W ≈ core ×_0 U ×_1 V`` with ``core (r_out, r_in, kh, kw)``. The core, read in the
order ``(r_in, kh, kw, r_out)``, is then a tensor train of four cores
``A (r_in, b_1) · B (b_1, kh, b_2) · C (b_2, kw, b_3) · D (b_3, r_out)`` (TT-SVD,
:func:`tensorops.decompositions.tt_svd`, bonds capped by ``(r_in, t, r_out)``). Realised as:

    1x1 (in → b_1) → kh x 1 (b_1 → b_2) → 1 x kw (b_2 → b_3) → 1x1 (b_3 → out, bias)

``A`` is folded into the input basis ``V`` and ``D`` into the output basis ``U``: capping the outer
bonds below ``r_in`` / ``r_out`` would only lower the Tucker ranks, so the one new rank is the
middle bond ``t``, which splits the core into a vertical and a horizontal convolution. The bonds
are ``b_1 = min(r_in, kh·kw·r_out)``, ``b_2 = min(t, b_1·kh, kw·r_out)``,
``b_3 = min(r_out, b_2·kw)`` (what TT-SVD returns). The vertical conv carries the height part of
stride, padding and dilation and the horizontal one the width part, as in CP; with full ranks
the layer reproduces the dense conv for every geometry.
"""

from __future__ import annotations

import torch
from torch import nn

from tensorops.decompositions import ModeBasis, tt_svd, tucker2
from tensorops.layers._geometry import ConvGeometry, pointwise
from tensorops.layers._tt_conv import pad_core
from tensorops.layers._validation import plain_conv_layout


def tt_tucker_bonds(
    kernel_size: tuple[int, int], ranks: tuple[int, int, int]
) -> tuple[int, int, int]:
    """The widths ``(b_1, b_2, b_3)`` of the three inner convolutions for ``(r_out, r_in, t)``."""
    kh, kw = kernel_size
    r_out, r_in, t = ranks
    b1 = min(r_in, kh * kw * r_out)
    b2 = min(t, b1 * kh, kw * r_out)
    b3 = min(r_out, b2 * kw)
    return b1, b2, b3


class TTTuckerConv2d(nn.Module):
    """Tucker-2 with a TT core: 1x1 → kh x 1 → 1 x kw → 1x1 (see the module docstring)."""

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
        r_out, r_in, t = (int(r) for r in ranks)
        self.ranks = (r_out, r_in, t)
        b1, b2, b3 = tt_tucker_bonds(geometry.kernel_size, self.ranks)
        self.bonds = (b1, b2, b3)
        options = {"device": device, "dtype": dtype}
        self.first = pointwise(in_channels, b1, bias=False, **options)  # type: ignore[arg-type]
        self.vertical = geometry.axis(0).conv(b1, b2, **options)  # type: ignore[arg-type]
        self.horizontal = geometry.axis(1).conv(b2, b3, **options)  # type: ignore[arg-type]
        self.last = pointwise(b3, out_channels, bias=bias, **options)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.horizontal(self.vertical(self.first(x))))

    @classmethod
    def skeleton(cls, conv: nn.Conv2d, ranks: tuple[int, int, int]) -> TTTuckerConv2d:
        """The layer's structure for ``conv`` at ``ranks = (r_out, r_in, t)``."""
        in_channels, out_channels, geometry, options = plain_conv_layout(conv, "tt_tucker")
        return cls(in_channels, out_channels, ranks, geometry, **options)

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        ranks: tuple[int, int, int],
        *,
        bases: tuple[ModeBasis, ModeBasis] | None = None,
    ) -> TTTuckerConv2d:
        """Tucker-2 (HOSVD, sharing ``bases`` if given) then TT-SVD of the permuted core."""
        layer = cls.skeleton(conv, ranks)
        r_out, r_in, t = layer.ranks
        b1, b2, b3 = layer.bonds
        tucker = tucker2(conv.weight, (r_out, r_in), bases=bases)
        core = tucker.core.permute(1, 2, 3, 0)  # (r_in, kh, kw, r_out)
        train = tt_svd(core, max_rank=[r_in, t, r_out])
        bonds = (1, b1, b2, b3, 1)
        first, vertical, horizontal, last = (
            pad_core(core, bonds[k], bonds[k + 1]) for k, core in enumerate(train.cores)
        )
        with torch.no_grad():
            layer.first.weight.copy_((tucker.in_factor @ first[0]).T[:, :, None, None])
            layer.vertical.weight.copy_(vertical.permute(2, 0, 1)[:, :, :, None])  # (b2, b1, kh, 1)
            layer.horizontal.weight.copy_(horizontal.permute(2, 0, 1)[:, :, None, :])
            layer.last.weight.copy_((tucker.out_factor @ last[:, :, 0].T)[:, :, None, None])
            if conv.bias is not None and layer.last.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer
