"""Tensor-train families for Linear layers: TT-matrix (``tt``), quantised TT (``qtt``), quantised
CP (``qcp``) and nonlinear TT (``ntt``).

Each takes one rank, so the search's per-layer rank scale applies: the maximal TT rank (every
bond is capped by it and by its own size) or the CP rank. Structures follow deterministically
from the dense layer and that rank (automatic modes for ``tt``/``ntt``, base-2 quantisation for
``qtt``/``qcp``), which is what checkpoint loading needs. Costs are closed forms of the
contraction-by-contraction forwards; :func:`tensorops.measure_cost` measures those forwards with
a FLOP counter (the layers set ``counts_macs_by_flops``). EVBMF seeds the TT rank from the TT
unfoldings of the (padded) weight; the QCP seed is the CP rank with the parameter count of the
QTT seed. None of them is in the default search.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from tensorops._types import Cost, LayerInfo
from tensorops.decompositions import tt_matrix_bond_limits, tt_matrix_ranks
from tensorops.evbmf import evbmf
from tensorops.exceptions import NotCompressibleError
from tensorops.layers import NTTLinear, QCPLinear, QTTLinear, TTLinear
from tensorops.layers._qcp_linear import qcp_macs, qcp_max_rank
from tensorops.layers._qtt_linear import quantised_modes
from tensorops.layers._tt_linear import resolve_modes, tt_matrix_macs
from tensorops.methods._base import BuildContext, DecompositionMethod


def _linear(module: nn.Module) -> nn.Linear:
    if type(module) is not nn.Linear:
        raise NotCompressibleError(f"{type(module).__name__} is not a plain nn.Linear")
    return module


def _tt_unfolding_seed(weight: torch.Tensor, outs: tuple[int, ...], ins: tuple[int, ...]) -> int:
    """Largest EVBMF rank over the TT unfoldings of the (zero-padded) weight's merged tensor."""
    d = len(outs)
    padded = weight.detach().new_zeros(math.prod(outs), math.prod(ins)).double()
    padded[: weight.shape[0], : weight.shape[1]] = weight.detach()
    tensor = padded.reshape([*outs, *ins]).permute([p for k in range(d) for p in (k, d + k)])
    sizes = [m * n for m, n in zip(outs, ins)]
    merged = tensor.reshape(sizes)
    best = 0
    for k in range(1, d):
        best = max(best, evbmf(merged.reshape(math.prod(sizes[:k]), -1)).rank)
    return best


class _TTMatrixMethod(DecompositionMethod):
    """Shared parts of the TT-matrix families; subclasses fix the modes and the layer class."""

    rank_names: ClassVar[tuple[str, ...]] = ("max_tt_rank",)
    in_default_search: ClassVar[bool] = False

    def _modes_of(self, out_features: int, in_features: int) -> tuple[tuple[int, ...], ...]:
        return resolve_modes(out_features, in_features, None, None)

    def refusal(self, module: nn.Module) -> str | None:
        if type(module) is not nn.Linear:
            return f"{type(module).__name__} is not a plain nn.Linear ({self.name} is for Linear)"
        try:
            self._modes_of(module.out_features, module.in_features)
        except NotCompressibleError as error:
            return str(error)
        return None

    def max_ranks(self, module: nn.Module) -> tuple[int, ...]:
        linear = _linear(module)
        outs, ins = self._modes_of(linear.out_features, linear.in_features)
        return (max(tt_matrix_bond_limits(outs, ins)),)

    def cost(self, info: LayerInfo, ranks: tuple[int, ...]) -> Cost:
        outs, ins = self._modes_of(info.out_channels, info.in_channels)
        tt_ranks = tt_matrix_ranks(outs, ins, ranks[0])
        params = sum(r0 * m * n * r1 for r0, m, n, r1 in zip(tt_ranks, outs, ins, tt_ranks[1:]))
        params += info.out_channels if info.has_bias else 0
        positions = info.output_size[0] * info.output_size[1]
        return Cost(params, positions * tt_matrix_macs(outs, ins, tt_ranks))

    def seed_ranks(self, module: nn.Module) -> tuple[int, ...]:
        linear = _linear(module)
        outs, ins = self._modes_of(linear.out_features, linear.in_features)
        seed = _tt_unfolding_seed(linear.weight, outs, ins)
        return (min(seed, self.max_ranks(module)[0]),)


class TTMethod(_TTMatrixMethod):
    name: ClassVar[str] = "tt"
    summary: ClassVar[str] = "TT-matrix weight (Novikov et al. 2015), automatic modes, by TT-SVD"

    def skeleton(self, module: nn.Module, ranks: tuple[int, ...]) -> nn.Module:
        return TTLinear.skeleton(_linear(module), ranks[0])

    def decompose(self, module: nn.Module, ranks: tuple[int, ...], ctx: BuildContext) -> nn.Module:
        return TTLinear.from_linear(_linear(module), ranks=ranks[0])


class NTTMethod(_TTMatrixMethod):
    name: ClassVar[str] = "ntt"
    summary: ClassVar[str] = "nonlinear TT (tanh between core contractions), TT-SVD init"

    def skeleton(self, module: nn.Module, ranks: tuple[int, ...]) -> nn.Module:
        return NTTLinear.skeleton(_linear(module), ranks[0])

    def decompose(self, module: nn.Module, ranks: tuple[int, ...], ctx: BuildContext) -> nn.Module:
        return NTTLinear.from_linear(_linear(module), ranks=ranks[0])


class QTTMethod(_TTMatrixMethod):
    name: ClassVar[str] = "qtt"
    summary: ClassVar[str] = "quantised TT-matrix: weight padded to powers of 2, 2x2 modes"

    def _modes_of(self, out_features: int, in_features: int) -> tuple[tuple[int, ...], ...]:
        return quantised_modes(out_features, in_features)

    def skeleton(self, module: nn.Module, ranks: tuple[int, ...]) -> nn.Module:
        return QTTLinear.skeleton(_linear(module), ranks[0])

    def decompose(self, module: nn.Module, ranks: tuple[int, ...], ctx: BuildContext) -> nn.Module:
        return QTTLinear.from_linear(_linear(module), ranks[0])


class QCPMethod(DecompositionMethod):
    name: ClassVar[str] = "qcp"
    rank_names: ClassVar[tuple[str, ...]] = ("cp_rank",)
    summary: ClassVar[str] = "CP of the quantised weight (base 2), seeded ALS"
    in_default_search: ClassVar[bool] = False

    _qtt = QTTMethod()

    def refusal(self, module: nn.Module) -> str | None:
        return self._qtt.refusal(module)

    def max_ranks(self, module: nn.Module) -> tuple[int, ...]:
        linear = _linear(module)
        return (qcp_max_rank(linear.out_features, linear.in_features),)

    def cost(self, info: LayerInfo, ranks: tuple[int, ...]) -> Cost:
        outs, ins = self._qtt._modes_of(info.out_channels, info.in_channels)
        params = ranks[0] * sum(m * n for m, n in zip(outs, ins))
        params += info.out_channels if info.has_bias else 0
        positions = info.output_size[0] * info.output_size[1]
        return Cost(params, positions * qcp_macs(outs, ins, ranks[0]))

    def skeleton(self, module: nn.Module, ranks: tuple[int, ...]) -> nn.Module:
        return QCPLinear.skeleton(_linear(module), ranks[0])

    def decompose(self, module: nn.Module, ranks: tuple[int, ...], ctx: BuildContext) -> nn.Module:
        return QCPLinear.from_linear(_linear(module), ranks[0], seed=ctx.seed)

    def seed_ranks(self, module: nn.Module) -> tuple[int, ...]:
        """The CP rank whose parameter count matches QTT at its EVBMF seed rank."""
        linear = _linear(module)
        outs, ins = self._qtt._modes_of(linear.out_features, linear.in_features)
        (tt_seed,) = self._qtt.seed_ranks(module)
        if tt_seed == 0:
            return (0,)
        tt_ranks = tt_matrix_ranks(outs, ins, tt_seed)
        tt_params = sum(r0 * m * n * r1 for r0, m, n, r1 in zip(tt_ranks, outs, ins, tt_ranks[1:]))
        rank = round(tt_params / sum(m * n for m, n in zip(outs, ins)))
        return (min(rank, self.max_ranks(module)[0]),)
