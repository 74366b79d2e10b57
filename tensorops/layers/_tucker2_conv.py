"""Tucker-2 factorised convolution: 1x1 (in→r_in) → kxk core (r_in→r_out) → 1x1 (r_out→out)."""

from __future__ import annotations

import torch
from torch import nn

from tensorops.decompositions import ModeBasis, tucker2
from tensorops.layers._geometry import ConvGeometry, pointwise
from tensorops.layers._validation import plain_conv_layout


class Tucker2Conv2d(nn.Module):
    """A conv whose kernel is Tucker-2 factorised on its channel modes (Kim et al., 2016).

    Stride, padding (also ``'same'``/``'valid'``), dilation and padding mode sit on the core; the
    pointwise convs commute with any padding, so a full-rank factorisation is exact.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ranks: tuple[int, int],
        geometry: ConvGeometry,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        r_out, r_in = ranks
        self.ranks = (int(r_out), int(r_in))
        self.first = pointwise(in_channels, r_in, bias=False, device=device, dtype=dtype)
        self.core = geometry.conv(r_in, r_out, device=device, dtype=dtype)
        self.last = pointwise(r_out, out_channels, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.core(self.first(x)))

    @classmethod
    def skeleton(cls, conv: nn.Conv2d, ranks: tuple[int, int]) -> Tucker2Conv2d:
        """The layer's structure for ``conv`` at ``ranks``, weights uninitialised."""
        in_channels, out_channels, geometry, options = plain_conv_layout(conv, "tucker2")
        return cls(in_channels, out_channels, ranks, geometry, **options)

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        ranks: tuple[int, int],
        *,
        n_iter: int = 0,
        bases: tuple[ModeBasis, ModeBasis] | None = None,
    ) -> Tucker2Conv2d:
        """Factorise ``conv``'s kernel at ``ranks = (r_out, r_in)`` (HOSVD, then HOOI sweeps)."""
        layer = cls.skeleton(conv, ranks)
        result = tucker2(conv.weight, layer.ranks, n_iter=n_iter, bases=bases)
        with torch.no_grad():
            # first: (r_in, in, 1, 1); core: (r_out, r_in, kh, kw); last: (out, r_out, 1, 1).
            layer.first.weight.copy_(result.in_factor.T[:, :, None, None])
            layer.core.weight.copy_(result.core)
            layer.last.weight.copy_(result.out_factor[:, :, None, None])
            if conv.bias is not None and layer.last.bias is not None:
                layer.last.bias.copy_(conv.bias)
        return layer
