"""The built-in methods: Tucker-2 and CP for kxk convolutions, truncated SVD for matrices.

Tucker-2 and SVD also factorise ``nn.Conv1d`` (kernel ``(out, in, k)``, handled as the 2-D
kernel ``(out, in, k, 1)``; :class:`~tensorops.inventory.LayerInfo` describes a Conv1d as a
width-1 2-D convolution, so one cost formula serves both).
"""

from __future__ import annotations

from typing import ClassVar, cast

import torch
from torch import nn

from tensorops._types import Cost, LayerInfo
from tensorops.decompositions import ModeBasis, max_cp_rank, mode_bases
from tensorops.evbmf import cp_rank_from_tucker2, evbmf, tucker2_ranks
from tensorops.layers import (
    CPConv2d,
    LowRankConv1d,
    LowRankConv2d,
    LowRankLinear,
    Tucker2Conv1d,
    Tucker2Conv2d,
    conv1d_refusal,
    conv_refusal,
)
from tensorops.methods._base import BuildContext, DecompositionMethod


def _spatial_kernel_refusal(module: nn.Module, name: str, *, conv1d: bool = False) -> str | None:
    """Why ``name`` cannot factorise ``module``: it needs a kxk Conv2d (or, with ``conv1d``,
    a Conv1d with k > 1)."""
    if conv1d and type(module) is nn.Conv1d:
        reason = conv1d_refusal(module)
        if reason is None and module.kernel_size == (1,):
            return f"kernel-1 convolution: {name} needs a kernel longer than 1 (use svd)"
        return reason
    reason = conv_refusal(module)
    if reason is not None:
        return reason
    assert isinstance(module, nn.Conv2d)
    if module.kernel_size == (1, 1):
        return f"1x1 convolution: {name} needs a spatial kernel (use svd)"
    return None


def _conv_weight(module: nn.Module) -> torch.Tensor:
    """The 4-D kernel of a Conv2d, or of a Conv1d as ``(out, in, k, 1)``."""
    if isinstance(module, nn.Conv1d):
        return module.weight[..., None]
    assert isinstance(module, nn.Conv2d)
    return module.weight


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


class Tucker2Method(DecompositionMethod):
    name: ClassVar[str] = "tucker2"
    rank_names: ClassVar[tuple[str, ...]] = ("r_out", "r_in")
    summary: ClassVar[str] = "Tucker-2 on the channel modes: 1x1 → kxk (or k) core → 1x1"

    def refusal(self, module: nn.Module) -> str | None:
        return _spatial_kernel_refusal(module, "Tucker-2", conv1d=True)

    def max_ranks(self, module: nn.Module) -> tuple[int, ...]:
        weight = _conv_weight(module)
        return int(weight.shape[0]), int(weight.shape[1])

    def cost(self, info: LayerInfo, ranks: tuple[int, ...]) -> Cost:
        r_out, r_in = ranks
        kh, kw = info.kernel_size
        core = r_in * r_out * kh * kw
        bias = info.out_channels if info.has_bias else 0
        params = info.in_channels * r_in + core + r_out * info.out_channels + bias
        macs = _area(info.input_size) * info.in_channels * r_in + _area(info.output_size) * (
            core + r_out * info.out_channels
        )
        return Cost(params, macs)

    def skeleton(self, module: nn.Module, ranks: tuple[int, ...]) -> nn.Module:
        if isinstance(module, nn.Conv1d):
            return Tucker2Conv1d.skeleton(module, (ranks[0], ranks[1]))
        assert isinstance(module, nn.Conv2d)
        return Tucker2Conv2d.skeleton(module, (ranks[0], ranks[1]))

    def decompose(self, module: nn.Module, ranks: tuple[int, ...], ctx: BuildContext) -> nn.Module:
        key = ("tucker2-bases", ctx.layer_name)
        bases = ctx.cache.get(key)
        if bases is None:
            bases = mode_bases(_conv_weight(module))
            ctx.cache[key] = bases
        typed = cast(tuple[ModeBasis, ModeBasis], bases)
        if isinstance(module, nn.Conv1d):
            return Tucker2Conv1d.from_conv(module, (ranks[0], ranks[1]), bases=typed)
        assert isinstance(module, nn.Conv2d)
        return Tucker2Conv2d.from_conv(module, (ranks[0], ranks[1]), bases=typed)

    def seed_ranks(self, module: nn.Module) -> tuple[int, ...]:
        return tucker2_ranks(_conv_weight(module))


class CPMethod(DecompositionMethod):
    name: ClassVar[str] = "cp"
    rank_names: ClassVar[tuple[str, ...]] = ("rank",)
    summary: ClassVar[str] = "CP of the 4-D kernel: 1x1 → depthwise kx1 → depthwise 1xk → 1x1"

    def refusal(self, module: nn.Module) -> str | None:
        return _spatial_kernel_refusal(module, "CP")

    def max_ranks(self, module: nn.Module) -> tuple[int, ...]:
        return (max_cp_rank(tuple(_conv_weight(module).shape)),)

    def cost(self, info: LayerInfo, ranks: tuple[int, ...]) -> Cost:
        (rank,) = ranks
        kh, kw = info.kernel_size
        bias = info.out_channels if info.has_bias else 0
        params = rank * (info.in_channels + kh + kw + info.out_channels) + bias
        h_out, w_out = info.output_size
        w_in = info.input_size[1]
        macs = (
            _area(info.input_size) * info.in_channels * rank
            + h_out * w_in * rank * kh  # vertical depthwise: output rows, input columns
            + h_out * w_out * rank * (kw + info.out_channels)
        )
        return Cost(params, macs)

    def skeleton(self, module: nn.Module, ranks: tuple[int, ...]) -> nn.Module:
        assert isinstance(module, nn.Conv2d)
        return CPConv2d.skeleton(module, ranks[0])

    def decompose(self, module: nn.Module, ranks: tuple[int, ...], ctx: BuildContext) -> nn.Module:
        assert isinstance(module, nn.Conv2d)
        return CPConv2d.from_conv(module, ranks[0], seed=ctx.seed)

    def seed_ranks(self, module: nn.Module) -> tuple[int, ...]:
        weight = _conv_weight(module)
        return (cp_rank_from_tucker2(tuple(weight.shape), tucker2_ranks(weight)),)


class SVDMethod(DecompositionMethod):
    name: ClassVar[str] = "svd"
    rank_names: ClassVar[tuple[str, ...]] = ("rank",)
    summary: ClassVar[str] = "truncated SVD of the layer matrix: two thin layers"

    def refusal(self, module: nn.Module) -> str | None:
        if type(module) is nn.Linear:
            return None
        if type(module) is nn.Conv1d:
            return conv1d_refusal(module)
        return conv_refusal(module)

    def _matrix(self, module: nn.Module) -> torch.Tensor:
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        return weight.reshape(weight.shape[0], -1)

    def max_ranks(self, module: nn.Module) -> tuple[int, ...]:
        return (min(self._matrix(module).shape),)

    def cost(self, info: LayerInfo, ranks: tuple[int, ...]) -> Cost:
        (rank,) = ranks
        kh, kw = info.kernel_size
        fan_in = info.in_channels * kh * kw
        bias = info.out_channels if info.has_bias else 0
        params = rank * (fan_in + info.out_channels) + bias
        return Cost(params, _area(info.output_size) * rank * (fan_in + info.out_channels))

    def skeleton(self, module: nn.Module, ranks: tuple[int, ...]) -> nn.Module:
        if isinstance(module, nn.Linear):
            return LowRankLinear.skeleton(module, ranks[0])
        if isinstance(module, nn.Conv1d):
            return LowRankConv1d.skeleton(module, ranks[0])
        assert isinstance(module, nn.Conv2d)
        return LowRankConv2d.skeleton(module, ranks[0])

    def decompose(self, module: nn.Module, ranks: tuple[int, ...], ctx: BuildContext) -> nn.Module:
        if isinstance(module, nn.Linear):
            return LowRankLinear.from_linear(module, ranks[0])
        if isinstance(module, nn.Conv1d):
            return LowRankConv1d.from_conv(module, ranks[0])
        assert isinstance(module, nn.Conv2d)
        return LowRankConv2d.from_conv(module, ranks[0])

    def seed_ranks(self, module: nn.Module) -> tuple[int, ...]:
        return (evbmf(self._matrix(module)).rank,)
