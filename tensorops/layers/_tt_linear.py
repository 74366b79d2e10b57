"""TT-matrix linear layer (Novikov, Podoprikhin, Osokin and Vetrov, "Tensorizing neural
networks", NeurIPS 2015).

The weight ``(out, in)`` is a TT-matrix with cores ``(r_{k-1}, m_k, n_k, r_k)``,
``prod m_k = out`` and ``prod n_k = in``. The forward contracts the input with one core after
another and never forms the weight: per input vector it costs
``Σ_k (m_1···m_k) (n_k···n_d) r_{k-1} r_k`` multiply-accumulates (:func:`tt_matrix_macs`).

Automatic modes (when none are given): ``d = min(3, max(Ω(out), Ω(in)))`` cores, ``Ω`` counting
prime factors with multiplicity; each dimension's prime factors, largest first, go one by one
to the group whose product is smallest so far (the first such group on ties); groups are listed
largest first and padded with 1s up to ``d``. ``Linear(784, 300)`` gets in modes (14, 8, 7) and
out modes (10, 6, 5). Layers whose two dimensions are both prime (``d < 2``) are refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from tensorops.decompositions import tt_matrix_ranks, tt_matrix_svd
from tensorops.exceptions import NotCompressibleError
from tensorops.layers._validation import require_linear

#: Default number of TT cores when the modes are derived automatically.
DEFAULT_TT_ORDER = 3


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``n`` with multiplicity, largest first (``[]`` for 1)."""
    if n < 1:
        raise ValueError(f"can only factorise positive integers, got {n}")
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return sorted(factors, reverse=True)


def factorize_modes(n: int, d: int) -> tuple[int, ...]:
    """``n`` as ``d`` balanced factors, largest first (greedy over the prime factors)."""
    if d < 1:
        raise ValueError(f"need at least one mode, got d={d}")
    groups = [1] * d
    for p in prime_factors(n):
        smallest = min(range(d), key=lambda k: (groups[k], k))
        groups[smallest] *= p
    return tuple(sorted(groups, reverse=True))


def default_tt_order(out_features: int, in_features: int) -> int:
    """``min(DEFAULT_TT_ORDER, max(Ω(out), Ω(in)))``."""
    omega = max(len(prime_factors(out_features)), len(prime_factors(in_features)))
    return min(DEFAULT_TT_ORDER, omega)


def resolve_modes(
    out_features: int,
    in_features: int,
    out_modes: Sequence[int] | None,
    in_modes: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The given modes, validated, or the automatic ones (see the module docstring)."""
    if out_modes is None and in_modes is None:
        d = default_tt_order(out_features, in_features)
    else:
        d = len(out_modes if out_modes is not None else in_modes)  # type: ignore[arg-type]
    outs = tuple(int(m) for m in out_modes) if out_modes else factorize_modes(out_features, d)
    ins = tuple(int(n) for n in in_modes) if in_modes else factorize_modes(in_features, d)
    if len(outs) != len(ins) or math.prod(outs) != out_features or math.prod(ins) != in_features:
        raise ValueError(
            f"TT modes out={outs} in={ins} must have equal lengths and multiply to "
            f"({out_features}, {in_features})"
        )
    if len(outs) < 2:
        raise NotCompressibleError(
            f"a TT-matrix of ({out_features}, {in_features}) needs at least 2 cores, got modes "
            f"{outs} x {ins}; both dimensions are prime, so there is nothing to tensorise"
        )
    return outs, ins


def tt_matrix_macs(out_modes: Sequence[int], in_modes: Sequence[int], ranks: Sequence[int]) -> int:
    """MACs per input vector of :func:`tt_matrix_forward`: ``Σ_k M_{<=k} N_{>=k} r_{k-1} r_k``."""
    total = 0
    for k in range(len(out_modes)):
        total += math.prod(out_modes[: k + 1]) * math.prod(in_modes[k:]) * ranks[k] * ranks[k + 1]
    return int(total)


def tt_matrix_forward(
    x: torch.Tensor,
    cores: Sequence[torch.Tensor],
    between: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``x @ W.T`` for ``x`` (P, prod n_k) and TT-matrix ``W`` given by ``cores``, core by core.

    ``between`` (if given) is applied to the intermediate result after every core but the last
    (the nonlinear TT layer uses it). The state after core ``k`` is laid out as
    ``(P, m_1, ..., m_k, r_k, n_{k+1}, ..., n_d)``.
    """
    batch = x.shape[0]
    in_modes = [int(core.shape[2]) for core in cores]
    lead, state = batch, x
    for k, core in enumerate(cores):
        rank_in, m, n, rank_out = core.shape
        rest = math.prod(in_modes[k + 1 :])
        # (lead, r, n, rest) -> (lead * rest, r * n): contract (r_{k-1}, n_k) with the core.
        flat = state.reshape(lead, rank_in, n, rest).permute(0, 3, 1, 2).reshape(-1, rank_in * n)
        weight = core.permute(0, 2, 1, 3).reshape(rank_in * n, m * rank_out)
        state = (flat @ weight).reshape(lead, rest, m, rank_out).permute(0, 2, 3, 1)
        lead = lead * m  # not in place: under tracing sizes are tensors shared with batch
        if between is not None and k < len(cores) - 1:
            state = between(state)
    return state.reshape(batch, -1)


class TTLinear(nn.Module):
    """``nn.Linear`` with a TT-matrix weight; ``cores[k]`` has shape ``(r_{k-1}, m_k, n_k, r_k)``.

    Inputs are ``(..., in_features)``. The forward pads the input with zeros to ``prod in_modes``
    and crops the output to ``out_features`` when the modes cover more (the quantised layers).
    """

    counts_macs_by_flops: ClassVar[bool] = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        out_modes: Sequence[int],
        in_modes: Sequence[int],
        ranks: Sequence[int],
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(ranks) != len(out_modes) + 1 or ranks[0] != 1 or ranks[-1] != 1:
            raise ValueError(f"ranks must be (1, r_1, ..., r_(d-1), 1), got {tuple(ranks)}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.out_modes = tuple(int(m) for m in out_modes)
        self.in_modes = tuple(int(n) for n in in_modes)
        self.ranks = tuple(int(r) for r in ranks)
        if math.prod(self.out_modes) < out_features or math.prod(self.in_modes) < in_features:
            raise ValueError(
                f"modes {self.out_modes} x {self.in_modes} cannot hold a ({out_features}, "
                f"{in_features}) weight"
            )
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(r0, m, n, r1, device=device, dtype=dtype))
            for r0, m, n, r1 in zip(self.ranks, self.out_modes, self.in_modes, self.ranks[1:])
        )
        self.bias = (
            nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"out_modes={self.out_modes}, in_modes={self.in_modes}, ranks={self.ranks}, "
            f"bias={self.bias is not None}"
        )

    def _between(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead_shape = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        padded_in = math.prod(self.in_modes)
        if padded_in > self.in_features:
            flat = nn.functional.pad(flat, (0, padded_in - self.in_features))
        out = tt_matrix_forward(flat, list(self.cores), self._between())
        out = out[:, : self.out_features]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead_shape, self.out_features)

    def weight_matrix(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight (for tests and error reports, not used by forward)."""
        from tensorops.decompositions import tt_matrix_to_matrix

        return tt_matrix_to_matrix(list(self.cores))[: self.out_features, : self.in_features]

    def macs_per_vector(self) -> int:
        return tt_matrix_macs(self.out_modes, self.in_modes, self.ranks)

    @classmethod
    def skeleton(
        cls,
        linear: nn.Linear,
        max_rank: int | Sequence[int] | None = None,
        *,
        out_modes: Sequence[int] | None = None,
        in_modes: Sequence[int] | None = None,
    ) -> TTLinear:
        """The structure :meth:`from_linear` builds with the same arguments, weights unset."""
        require_linear(linear, "tt")
        outs, ins = resolve_modes(linear.out_features, linear.in_features, out_modes, in_modes)
        return cls(
            linear.in_features,
            linear.out_features,
            outs,
            ins,
            tt_matrix_ranks(outs, ins, max_rank),  # type: ignore[arg-type]
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        ranks: int | Sequence[int] | None = None,
    ) -> TTLinear:
        """TT-SVD of ``linear.weight`` with TT ranks capped by ``ranks`` (one int for every
        bond, one per bond, or None for the exact TT-matrix); the bias is kept."""
        layer = cls.skeleton(linear, ranks, out_modes=out_modes, in_modes=in_modes)
        layer.load_weight(linear.weight, linear.bias)
        return layer

    def load_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Set the cores to the TT-SVD of ``weight`` (zero-padded to the modes) at ``ranks``."""
        rows, cols = math.prod(self.out_modes), math.prod(self.in_modes)
        padded = weight.detach().new_zeros(rows, cols)
        padded[: self.out_features, : self.in_features] = weight.detach()
        train = tt_matrix_svd(padded, self.out_modes, self.in_modes, max_rank=self.ranks[1:-1])
        with torch.no_grad():
            for core, value in zip(self.cores, train.cores):
                core.copy_(value)
            if bias is not None and self.bias is not None:
                self.bias.copy_(bias)
