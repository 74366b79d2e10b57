"""Norm-based structured pruning as a plan method: keep whole output units and input features."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from tensorops._types import Cost, LayerInfo
from tensorops.evbmf import evbmf
from tensorops.layers import NormConv2d, NormLinear, conv_refusal
from tensorops.methods._base import BuildContext, DecompositionMethod


class PruneMethod(DecompositionMethod):
    """``prune``: ranks (kept output units, kept input features or channels).

    The built layer (:class:`NormLinear` / :class:`NormConv2d`) writes each kept unit's weight
    as ``g * v / ||v||`` so that an L1 penalty on ``g`` can drive units to zero norm during
    training; :func:`tensorops.prune_channels` then removes them and the matching inputs of the
    next layer. Standalone, ``decompose`` keeps the rows and input columns of largest L2 norm.
    The parameter count includes the ``kept_out`` norms ``g``.
    """

    name: ClassVar[str] = "prune"
    rank_names: ClassVar[tuple[str, ...]] = ("kept_out", "kept_in")
    summary: ClassVar[str] = "norm-based structured pruning: keep whole units and input features"
    in_default_search: ClassVar[bool] = False

    def refusal(self, module: nn.Module) -> str | None:
        if type(module) is nn.Linear:
            return None
        return conv_refusal(module)

    def max_ranks(self, module: nn.Module) -> tuple[int, ...]:
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        return int(weight.shape[0]), int(weight.shape[1])

    def cost(self, info: LayerInfo, ranks: tuple[int, ...]) -> Cost:
        kept_out, kept_in = ranks
        kh, kw = info.kernel_size
        fan_in = kept_in * kh * kw
        bias = info.out_channels if info.has_bias else 0
        params = kept_out * fan_in + kept_out + bias
        area = info.output_size[0] * info.output_size[1]
        return Cost(params, area * kept_out * fan_in)

    def skeleton(self, module: nn.Module, ranks: tuple[int, ...]) -> nn.Module:
        if isinstance(module, nn.Linear):
            return NormLinear.skeleton(module, ranks[0], ranks[1])
        assert isinstance(module, nn.Conv2d)
        return NormConv2d.skeleton(module, ranks[0], ranks[1])

    def decompose(self, module: nn.Module, ranks: tuple[int, ...], ctx: BuildContext) -> nn.Module:
        if isinstance(module, nn.Linear):
            return NormLinear.from_linear(module, ranks[0], ranks[1])
        assert isinstance(module, nn.Conv2d)
        return NormConv2d.from_conv(module, ranks[0], ranks[1])

    def seed_ranks(self, module: nn.Module) -> tuple[int, ...]:
        """EVBMF rank of the (out, in·kh·kw) matrix as the units to keep; every input kept."""
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        kept_out = evbmf(weight.reshape(weight.shape[0], -1)).rank
        return int(kept_out), int(weight.shape[1])
