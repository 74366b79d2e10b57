"""TT convolution (Garipov, Podoprikhin, Novikov and Vetrov, "Ultimate tensorization:
compressing convolutional and FC layers alike", 2016).

The kernel ``W (out, in, kh, kw)`` with ``out = o_1···o_d`` and ``in = i_1···i_d`` (channel
indices split C-order, the first mode most significant) is the tensor train

    W[(o_1..o_d), (i_1..i_d), h, w] = S[(h, w), :] · C_1[:, (o_1, i_1), :] ··· C_d[:, (o_d, i_d), :]

over the modes ``(kh·kw, o_1·i_1, …, o_d·i_d)``: one spatial core ``S (kh·kw, r_1)``, then one
core ``C_k (r_k, o_k, i_k, r_{k+1})`` per pair of channel modes (``r_{d+1} = 1``). It is fitted
by TT-SVD of that reshaped kernel (:func:`tensorops.decompositions.tt_svd`) with every TT rank
capped by one ``rank``.

**Forward, without forming the kernel.** The spatial core is a bank of ``r_1`` kxk filters
shared by every input channel: the input ``(B, in, H, W)`` is viewed as ``(B·in, 1, H, W)`` and
convolved with ``(r_1, 1, kh, kw)`` under the layer's stride, padding (any mode), and dilation.
The result, laid out as ``(B·H'·W', r_1, i_1, …, i_d)``, is then a batch of vectors that the
channel cores map to ``out`` exactly as a TT-matrix layer does (contract ``(r_k, i_k)``, emit
``(o_k, r_{k+1})``; :func:`tensorops.layers._tt_linear.tt_matrix_forward`). Per output pixel
this costs ``in·r_1·kh·kw + Σ_k (o_1···o_k)(i_k···i_d) r_k r_{k+1}`` MACs, which
:func:`tensorops.measure_cost` measures with its FLOP counter (``counts_macs_by_flops``).

**Modes.** ``d = min(3, Ω(out), Ω(in))`` with ``Ω`` the number of prime factors counted with
multiplicity; each channel count is split into ``d`` balanced factors, largest first
(:func:`tensorops.layers._tt_linear.factorize_modes`), so every mode is at least 2. A layer with
a prime (or 1) channel count has ``d < 2`` and is refused: a single channel mode leaves nothing
to tensorise (use Tucker-2 there).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from tensorops.decompositions import tt_svd
from tensorops.exceptions import NotCompressibleError
from tensorops.layers._geometry import ConvGeometry
from tensorops.layers._tt_linear import factorize_modes, prime_factors, tt_matrix_forward
from tensorops.layers._validation import plain_conv_layout

#: Most channel modes per side.
MAX_TT_CONV_ORDER = 3


def tt_conv_modes(out_channels: int, in_channels: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(out_modes, in_modes)`` by the rule in the module docstring; refuses prime counts."""
    omegas = {"out": len(prime_factors(out_channels)), "in": len(prime_factors(in_channels))}
    d = min(MAX_TT_CONV_ORDER, *omegas.values())
    if d < 2:
        side = "out" if omegas["out"] < 2 else "in"
        count = out_channels if side == "out" else in_channels
        raise NotCompressibleError(
            f"tt_conv needs both channel counts to factorise into at least 2 modes; "
            f"{side}_channels={count} is {'1' if count == 1 else 'prime'} (use tucker2)"
        )
    return factorize_modes(out_channels, d), factorize_modes(in_channels, d)


def tt_ranks(sizes: tuple[int, ...], cap: int | None) -> tuple[int, ...]:
    """The ranks ``(1, r_1, …, 1)`` :func:`tt_svd` gives a tensor of mode ``sizes`` when every
    rank is capped by ``cap``: ``r_k = min(cap, r_{k-1}·n_k, n_{k+1}···n_d)``."""
    ranks = [1]
    for k in range(len(sizes) - 1):
        limit = min(ranks[-1] * sizes[k], math.prod(sizes[k + 1 :]))
        ranks.append(limit if cap is None else min(cap, limit))
    return (*ranks, 1)


def tt_conv_sizes(
    kernel_size: tuple[int, int], out_modes: tuple[int, ...], in_modes: tuple[int, ...]
) -> tuple[int, ...]:
    """Mode sizes of the train: ``(kh·kw, o_1·i_1, …, o_d·i_d)``."""
    return (kernel_size[0] * kernel_size[1], *(o * i for o, i in zip(out_modes, in_modes)))


class TTConv2d(nn.Module):
    """A conv whose kernel is a tensor train over (spatial, paired channel modes); see module."""

    counts_macs_by_flops: ClassVar[bool] = True

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
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.rank = int(rank)
        self.geometry = geometry
        self.out_modes, self.in_modes = tt_conv_modes(self.out_channels, self.in_channels)
        sizes = tt_conv_sizes(geometry.kernel_size, self.out_modes, self.in_modes)
        self.ranks = tt_ranks(sizes, self.rank)  # (1, r_1, …, r_d, 1)
        kh, kw = geometry.kernel_size
        options = {"device": device, "dtype": dtype}
        self.spatial = nn.Parameter(torch.empty(self.ranks[1], 1, kh, kw, **options))  # type: ignore[arg-type]
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(r0, o, i, r1, **options))  # type: ignore[arg-type]
            for r0, o, i, r1 in zip(self.ranks[1:], self.out_modes, self.in_modes, self.ranks[2:])
        )
        self.bias = nn.Parameter(torch.zeros(out_channels, **options)) if bias else None  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.geometry.kernel_size}, "
            f"out_modes={self.out_modes}, in_modes={self.in_modes}, ranks={self.ranks}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        # (B·in, 1, H, W) -> (B·in, r_1, H', W'): the shared spatial filter bank.
        z = _conv(x.reshape(batch * channels, 1, height, width), self.spatial, self.geometry)
        r_1, h_out, w_out = z.shape[1:]
        # -> (B·H'·W', r_1·in) with (r_1, i_1, …, i_d) C-order, the TT-matrix input layout.
        z = z.reshape(batch, channels, r_1, h_out * w_out).permute(0, 3, 2, 1)
        y = tt_matrix_forward(z.reshape(-1, r_1 * channels), list(self.cores))
        y = y.reshape(batch, h_out, w_out, self.out_channels).permute(0, 3, 1, 2)
        if self.bias is not None:
            y = y + self.bias[:, None, None]
        return y.contiguous()

    def kernel(self) -> torch.Tensor:
        """The dense ``(out, in, kh, kw)`` kernel (for tests; the forward never forms it)."""
        kh, kw = self.geometry.kernel_size
        d = len(self.out_modes)
        chain = self.spatial.reshape(self.ranks[1], kh * kw).T  # (S, r_1)
        for core in self.cores:
            chain = (chain @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
        # chain: (S, o_1, i_1, …, o_d, i_d) -> (o_1..o_d, i_1..i_d, kh, kw).
        full = chain.reshape(
            kh, kw, *(m for pair in zip(self.out_modes, self.in_modes) for m in pair)
        )
        order = [2 + 2 * k for k in range(d)] + [3 + 2 * k for k in range(d)] + [0, 1]
        return full.permute(order).reshape(self.out_channels, self.in_channels, kh, kw)

    @classmethod
    def skeleton(cls, conv: nn.Conv2d, rank: int) -> TTConv2d:
        """The layer's structure for ``conv`` with every TT rank capped by ``rank``."""
        in_channels, out_channels, geometry, options = plain_conv_layout(conv, "tt_conv")
        return cls(in_channels, out_channels, rank, geometry, **options)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int) -> TTConv2d:
        """TT-SVD of ``conv``'s kernel with every TT rank capped by ``rank``; bias kept."""
        layer = cls.skeleton(conv, rank)
        kh, kw = layer.geometry.kernel_size
        d = len(layer.out_modes)
        w = conv.weight.detach().reshape(*layer.out_modes, *layer.in_modes, kh, kw)
        # (o_1..o_d, i_1..i_d, kh, kw) -> (kh, kw, o_1, i_1, …, o_d, i_d).
        order = [2 * d, 2 * d + 1] + [m for k in range(d) for m in (k, d + k)]
        sizes = tt_conv_sizes((kh, kw), layer.out_modes, layer.in_modes)
        train = tt_svd(w.permute(order).reshape(sizes), max_rank=layer.rank)
        cores = [
            pad_core(core, layer.ranks[k], layer.ranks[k + 1]) for k, core in enumerate(train.cores)
        ]
        with torch.no_grad():
            layer.spatial.copy_(cores[0][0].T.reshape(layer.spatial.shape))
            for param, core, o, i in zip(layer.cores, cores[1:], layer.out_modes, layer.in_modes):
                param.copy_(core.reshape(core.shape[0], o, i, core.shape[2]))
            if conv.bias is not None and layer.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer


def pad_core(core: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Zero-pad a TT core to ranks ``(left, right)`` should TT-SVD return smaller ones."""
    if core.shape[0] == left and core.shape[2] == right:
        return core
    padded = core.new_zeros(left, core.shape[1], right)
    padded[: core.shape[0], :, : core.shape[2]] = core[:left, :, :right]
    return padded


def _conv(x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """``F.conv2d`` with ``geometry``'s stride, padding (any mode) and dilation, as Conv2d does."""
    if geometry.padding_mode == "zeros":
        return F.conv2d(x, weight, None, geometry.stride, geometry.padding, geometry.dilation)
    padded = F.pad(x, _explicit_padding(geometry), mode=geometry.padding_mode)
    return F.conv2d(padded, weight, None, geometry.stride, 0, geometry.dilation)


def _explicit_padding(geometry: ConvGeometry) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` padding, resolving ``'same'``/``'valid'`` as Conv2d does."""
    if geometry.padding == "valid":
        return (0, 0, 0, 0)
    if geometry.padding == "same":
        pads = []
        for axis in (1, 0):  # width first: F.pad lists the last dimension first
            total = geometry.dilation[axis] * (geometry.kernel_size[axis] - 1)
            pads += [total // 2, total - total // 2]
        return (pads[0], pads[1], pads[2], pads[3])
    assert not isinstance(geometry.padding, str)
    height, width = geometry.padding
    return (width, width, height, height)
