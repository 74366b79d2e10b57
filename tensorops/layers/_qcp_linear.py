"""Quantised CP linear layer: a CP decomposition of the quantised weight tensor.

The weight is zero-padded and split into base digits exactly as for :class:`QTTLinear`
(modes ``(m_k, n_k)``, see :func:`tensorops.decompositions.qtt_matrix_modes`), and the d-way
tensor with merged modes ``m_k n_k`` is decomposed by CP:
``W[i, j] = Σ_r A_1[i_1, j_1, r] ··· A_d[i_d, j_d, r]``, factor ``k`` of shape
``(m_k, n_k, rank)`` (the CP weights are folded into the last factor). The forward contracts the
input with one factor after another, keeping ``r`` as a batch dimension, and never forms the
weight: ``rank · Σ_k (m_1···m_k)(n_k···n_d)`` MACs per input vector (:func:`qcp_macs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from tensorops.decompositions import cp_als_nway
from tensorops.layers._qtt_linear import DEFAULT_QTT_BASE, quantised_modes
from tensorops.layers._validation import require_linear

#: ALS sweeps used by :meth:`QCPLinear.from_linear` unless told otherwise.
DEFAULT_QCP_SWEEPS = 30


def qcp_macs(out_modes: Sequence[int], in_modes: Sequence[int], rank: int) -> int:
    """MACs per input vector of the QCP forward."""
    return int(
        rank
        * sum(
            math.prod(out_modes[: k + 1]) * math.prod(in_modes[k:]) for k in range(len(out_modes))
        )
    )


def qcp_max_rank(out_features: int, in_features: int, base: int = DEFAULT_QTT_BASE) -> int:
    """The rank at which the factors hold as many parameters as the dense weight (at least 1)."""
    outs, ins = quantised_modes(out_features, in_features, base)
    return max(1, out_features * in_features // sum(m * n for m, n in zip(outs, ins)))


class QCPLinear(nn.Module):
    """``nn.Linear`` whose zero-padded, quantised weight is a rank-``rank`` CP tensor."""

    counts_macs_by_flops: ClassVar[bool] = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        *,
        base: int = DEFAULT_QTT_BASE,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.rank, self.base = int(rank), int(base)
        outs, ins = quantised_modes(out_features, in_features, base)
        self.out_modes, self.in_modes = tuple(outs), tuple(ins)
        self.factors = nn.ParameterList(
            nn.Parameter(torch.empty(m, n, rank, device=device, dtype=dtype))
            for m, n in zip(self.out_modes, self.in_modes)
        )
        self.bias = (
            nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, out_modes={self.out_modes}, in_modes={self.in_modes}, "
            f"bias={self.bias is not None}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead_shape = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        padded_in = math.prod(self.in_modes)
        if padded_in > self.in_features:
            flat = nn.functional.pad(flat, (0, padded_in - self.in_features))
        out = self._contract(flat)[:, : self.out_features]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead_shape, self.out_features)

    def _contract(self, x: torch.Tensor) -> torch.Tensor:
        batch, rank, d = x.shape[0], self.rank, len(self.factors)
        factors = list(self.factors)
        m, n = self.out_modes[0], self.in_modes[0]
        rest = math.prod(self.in_modes[1:])
        # First factor, a plain matmul: (P * rest, n_1) @ (n_1, m_1 * R) -> state (R, P m_1, rest).
        flat = x.reshape(batch, n, rest).permute(0, 2, 1).reshape(-1, n)
        state = flat @ factors[0].permute(1, 0, 2).reshape(n, m * rank)
        state = state.reshape(batch, rest, m, rank).permute(3, 0, 2, 1)
        lead = batch * m
        for k in range(1, d - 1):  # middle factors: one small matmul per r (bmm over r)
            m, n = self.out_modes[k], self.in_modes[k]
            rest = math.prod(self.in_modes[k + 1 :])
            flat = state.reshape(rank, lead, n, rest).permute(0, 1, 3, 2).reshape(rank, -1, n)
            state = torch.bmm(flat, factors[k].permute(2, 1, 0))  # (R, lead * rest, m)
            state = state.reshape(rank, lead, rest, m).permute(0, 1, 3, 2)
            lead = lead * m  # not in place: under tracing sizes are tensors shared with batch
        # Last factor contracts (r, n_d) together, which also sums the rank-one terms.
        m, n = self.out_modes[-1], self.in_modes[-1]
        flat = state.reshape(rank, lead, n).permute(1, 0, 2).reshape(lead, rank * n)
        out = flat @ factors[-1].permute(2, 1, 0).reshape(rank * n, m)
        return out.reshape(batch, -1)

    def weight_matrix(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight (for tests and error reports, not used by forward)."""
        d = len(self.factors)
        operands: list[object] = []
        for k, factor in enumerate(self.factors):
            operands += [factor, [k, d + k, 2 * d]]
        full = torch.einsum(*operands, list(range(2 * d)))
        rows, cols = math.prod(self.out_modes), math.prod(self.in_modes)
        return full.reshape(rows, cols)[: self.out_features, : self.in_features]

    def macs_per_vector(self) -> int:
        return qcp_macs(self.out_modes, self.in_modes, self.rank)

    @classmethod
    def skeleton(cls, linear: nn.Linear, rank: int, *, base: int = DEFAULT_QTT_BASE) -> QCPLinear:
        require_linear(linear, "qcp")
        return cls(
            linear.in_features,
            linear.out_features,
            rank,
            base=base,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        rank: int,
        *,
        base: int = DEFAULT_QTT_BASE,
        seed: int = 0,
        n_iter_max: int = DEFAULT_QCP_SWEEPS,
    ) -> QCPLinear:
        """CP-ALS (seeded, :func:`tensorops.decompositions.cp_als_nway`) of the quantised weight."""
        layer = cls.skeleton(linear, rank, base=base)
        d = len(layer.out_modes)
        rows, cols = math.prod(layer.out_modes), math.prod(layer.in_modes)
        weight = linear.weight.detach()
        padded = weight.new_zeros(rows, cols)
        padded[: layer.out_features, : layer.in_features] = weight
        tensor = padded.reshape([*layer.out_modes, *layer.in_modes])
        tensor = tensor.permute([p for k in range(d) for p in (k, d + k)])
        merged = tensor.reshape([m * n for m, n in zip(layer.out_modes, layer.in_modes)])
        result = cp_als_nway(merged, rank, n_iter_max=n_iter_max, seed=seed)
        with torch.no_grad():
            for k, (param, factor) in enumerate(zip(layer.factors, result.factors)):
                if k == d - 1:
                    factor = factor * result.weights
                param.copy_(factor.reshape(param.shape))
            if linear.bias is not None and layer.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer
