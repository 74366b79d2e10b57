"""Opt-in convolution families: block-term (BTD), tensor-train (TT) and TT-Tucker.

All three apply to plain kxk ``nn.Conv2d`` layers (groups == 1) and are left out of the default
search (``in_default_search = False``): name them in ``methods`` to offer them.
"""

from __future__ import annotations

import math
from typing import ClassVar, cast

from torch import nn

from tensorops._types import Cost, LayerInfo
from tensorops.decompositions import ModeBasis, max_btd_blocks, mode_bases
from tensorops.evbmf import evbmf, tucker2_ranks
from tensorops.layers import BTDConv2d, TTConv2d, TTTuckerConv2d
from tensorops.layers._tt_conv import tt_conv_modes, tt_conv_sizes, tt_ranks
from tensorops.layers._tt_linear import tt_matrix_macs
from tensorops.layers._tt_tucker_conv import tt_tucker_bonds
from tensorops.methods._base import BuildContext, DecompositionMethod
from tensorops.methods._builtin import _area, _conv_weight, _spatial_kernel_refusal

#: Blocks the EVBMF seed of BTD splits the EVBMF Tucker-2 widths into.
BTD_SEED_BLOCKS = 2


def _conv(module: nn.Module) -> nn.Conv2d:
    assert isinstance(module, nn.Conv2d)
    return module


def _bias(info: LayerInfo) -> int:
    return info.out_channels if info.has_bias else 0


class BTDMethod(DecompositionMethod):
    name: ClassVar[str] = "btd"
    rank_names: ClassVar[tuple[str, ...]] = ("blocks", "r_out", "r_in")
    summary: ClassVar[str] = (
        "block-term decomposition, a sum of Tucker-2 blocks: 1x1 → grouped kxk → 1x1"
    )
    in_default_search: ClassVar[bool] = False

    def refusal(self, module: nn.Module) -> str | None:
        return _spatial_kernel_refusal(module, "BTD")

    def max_ranks(self, module: nn.Module) -> tuple[int, ...]:
        shape = tuple(_conv_weight(module).shape)
        return max_btd_blocks(shape), int(shape[0]), int(shape[1])

    def cost(self, info: LayerInfo, ranks: tuple[int, ...]) -> Cost:
        blocks, r_out, r_in = ranks
        kh, kw = info.kernel_size
        core = blocks * r_out * r_in * kh * kw  # block-diagonal: R cores of (r_out, r_in, kh, kw)
        width_in, width_out = blocks * r_in, blocks * r_out
        params = info.in_channels * width_in + core + width_out * info.out_channels + _bias(info)
        macs = _area(info.input_size) * info.in_channels * width_in + _area(info.output_size) * (
            core + width_out * info.out_channels
        )
        return Cost(params, macs)

    def skeleton(self, module: nn.Module, ranks: tuple[int, ...]) -> nn.Module:
        blocks, r_out, r_in = ranks
        return BTDConv2d.skeleton(_conv(module), (blocks, r_out, r_in))

    def decompose(self, module: nn.Module, ranks: tuple[int, ...], ctx: BuildContext) -> nn.Module:
        blocks, r_out, r_in = ranks
        return BTDConv2d.from_conv(_conv(module), (blocks, r_out, r_in), seed=ctx.seed)

    def scaled_ranks(
        self, module: nn.Module, base: tuple[int, ...], scale: float, *, multiple: int = 1
    ) -> tuple[int, ...]:
        """As the base class, except that the block count is only rounded to an integer:
        ``multiple`` (hardware-friendly channel widths) applies to the block ranks."""
        blocks = super().scaled_ranks(module, base, scale)[0]
        return (blocks, *super().scaled_ranks(module, base, scale, multiple=multiple)[1:])

    def seed_ranks(self, module: nn.Module) -> tuple[int, ...]:
        """The EVBMF Tucker-2 widths split over ``BTD_SEED_BLOCKS`` blocks (one block when a
        width is below that), each block's ranks rounded up: the same channel widths as the
        EVBMF Tucker-2 plan with a block-diagonal, hence smaller, core."""
        r_out, r_in = tucker2_ranks(_conv_weight(module))
        blocks = BTD_SEED_BLOCKS if min(r_out, r_in) >= BTD_SEED_BLOCKS else 1
        return blocks, math.ceil(r_out / blocks), math.ceil(r_in / blocks)


class TTConvMethod(DecompositionMethod):
    name: ClassVar[str] = "tt_conv"
    rank_names: ClassVar[tuple[str, ...]] = ("rank",)
    summary: ClassVar[str] = (
        "tensor train over (kxk, paired channel modes): shared kxk filters → TT-matrix cores"
    )
    in_default_search: ClassVar[bool] = False

    def refusal(self, module: nn.Module) -> str | None:
        reason = _spatial_kernel_refusal(module, "TT")
        if reason is not None:
            return reason
        conv = _conv(module)
        try:
            tt_conv_modes(conv.out_channels, conv.in_channels)
        except ValueError as exc:
            return str(exc)
        return None

    def _sizes(self, module: nn.Module) -> tuple[int, ...]:
        conv = _conv(module)
        out_modes, in_modes = tt_conv_modes(conv.out_channels, conv.in_channels)
        return tt_conv_sizes(_kernel_size(conv), out_modes, in_modes)

    def max_ranks(self, module: nn.Module) -> tuple[int, ...]:
        return (max(tt_ranks(self._sizes(module), None)),)

    def cost(self, info: LayerInfo, ranks: tuple[int, ...]) -> Cost:
        (rank,) = ranks
        out_modes, in_modes = tt_conv_modes(info.out_channels, info.in_channels)
        sizes = tt_conv_sizes(info.kernel_size, out_modes, in_modes)
        bonds = tt_ranks(sizes, rank)  # (1, r_1, …, r_d, 1)
        params = sum(a * n * b for a, n, b in zip(bonds, sizes, bonds[1:])) + _bias(info)
        per_pixel = info.in_channels * bonds[1] * sizes[0] + tt_matrix_macs(
            out_modes, in_modes, bonds[1:]
        )
        return Cost(params, _area(info.output_size) * per_pixel)

    def skeleton(self, module: nn.Module, ranks: tuple[int, ...]) -> nn.Module:
        return TTConv2d.skeleton(_conv(module), ranks[0])

    def decompose(self, module: nn.Module, ranks: tuple[int, ...], ctx: BuildContext) -> nn.Module:
        return TTConv2d.from_conv(_conv(module), ranks[0])

    def seed_ranks(self, module: nn.Module) -> tuple[int, ...]:
        """The largest EVBMF rank over the train's unfoldings (one per TT bond), capped."""
        conv = _conv(module)
        out_modes, in_modes = tt_conv_modes(conv.out_channels, conv.in_channels)
        kh, kw = _kernel_size(conv)
        d = len(out_modes)
        w = conv.weight.detach().reshape(*out_modes, *in_modes, kh, kw)
        order = [2 * d, 2 * d + 1] + [m for k in range(d) for m in (k, d + k)]
        sizes = tt_conv_sizes((kh, kw), out_modes, in_modes)
        train = w.permute(order).reshape(sizes)
        estimates = [
            evbmf(train.reshape(math.prod(sizes[:k]), -1)).rank for k in range(1, len(sizes))
        ]
        return (min(max(estimates), self.max_ranks(module)[0]),)


class TTTuckerMethod(DecompositionMethod):
    name: ClassVar[str] = "tt_tucker"
    rank_names: ClassVar[tuple[str, ...]] = ("r_out", "r_in", "t")
    summary: ClassVar[str] = "Tucker-2 with a TT core: 1x1 → kx1 → 1xk → 1x1"
    in_default_search: ClassVar[bool] = False

    def refusal(self, module: nn.Module) -> str | None:
        return _spatial_kernel_refusal(module, "TT-Tucker")

    def max_ranks(self, module: nn.Module) -> tuple[int, ...]:
        out_ch, in_ch, kh, kw = (int(n) for n in _conv_weight(module).shape)
        return out_ch, in_ch, min(in_ch * kh, kw * out_ch)

    def cost(self, info: LayerInfo, ranks: tuple[int, ...]) -> Cost:
        r_out, r_in, t = ranks
        kh, kw = info.kernel_size
        b1, b2, b3 = tt_tucker_bonds(info.kernel_size, (r_out, r_in, t))
        params = info.in_channels * b1 + b1 * b2 * kh + b2 * b3 * kw + b3 * info.out_channels
        h_out, w_out = info.output_size
        w_in = info.input_size[1]
        macs = (
            _area(info.input_size) * info.in_channels * b1
            + h_out * w_in * b2 * b1 * kh  # vertical: output rows, input columns
            + h_out * w_out * (b3 * b2 * kw + info.out_channels * b3)
        )
        return Cost(params + _bias(info), macs)

    def skeleton(self, module: nn.Module, ranks: tuple[int, ...]) -> nn.Module:
        r_out, r_in, t = ranks
        return TTTuckerConv2d.skeleton(_conv(module), (r_out, r_in, t))

    def decompose(self, module: nn.Module, ranks: tuple[int, ...], ctx: BuildContext) -> nn.Module:
        conv = _conv(module)
        key = ("tucker2-bases", ctx.layer_name)  # shared with Tucker-2: same layer, same bases
        bases = ctx.cache.get(key)
        if bases is None:
            bases = mode_bases(conv.weight)
            ctx.cache[key] = bases
        r_out, r_in, t = ranks
        typed = cast(tuple[ModeBasis, ModeBasis], bases)
        return TTTuckerConv2d.from_conv(conv, (r_out, r_in, t), bases=typed)

    def seed_ranks(self, module: nn.Module) -> tuple[int, ...]:
        """EVBMF Tucker-2 ranks, and for ``t`` the EVBMF rank of the (in·kh, kw·out) unfolding
        that the middle TT bond separates."""
        weight = _conv_weight(module)
        r_out, r_in = tucker2_ranks(weight)
        out_ch, in_ch, kh, kw = weight.shape
        split = weight.detach().permute(1, 2, 3, 0).reshape(in_ch * kh, kw * out_ch)
        t = min(evbmf(split).rank, self.max_ranks(module)[2])
        return r_out, r_in, t


def _kernel_size(conv: nn.Conv2d) -> tuple[int, int]:
    kh, kw = conv.kernel_size
    return int(kh), int(kw)
