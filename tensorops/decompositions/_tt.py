"""Tensor-train (TT) format and the TT-SVD algorithm of Oseledets (SIAM J. Sci. Comput., 2011).

A d-way tensor ``A[i_1, ..., i_d]`` is the chain of matrix products
``G_1[:, i_1, :] @ G_2[:, i_2, :] @ ... @ G_d[:, i_d, :]``, core ``G_k`` having shape
``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_d = 1``. TT-SVD sweeps left to right: it reshapes the
remainder to ``(r_{k-1} n_k, n_{k+1} ... n_d)``, keeps a truncated SVD, stores the left singular
vectors as core ``k`` and carries ``S V^T`` on. The left cores are orthonormal, so the squared
errors of the ``d - 1`` truncations add up: truncating each at ``eps / sqrt(d - 1) * ||A||``
bounds the total relative error by ``eps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tensorops.decompositions._linalg import as_float64, threads_for
from tensorops.exceptions import RankError


@dataclass(frozen=True)
class TTResult:
    """Cores of a tensor train; core ``k`` has shape ``(r_k, n_k, r_{k+1})``, ``r_0 = r_d = 1``."""

    cores: tuple[torch.Tensor, ...]

    @property
    def ranks(self) -> tuple[int, ...]:
        """``(1, r_1, ..., r_{d-1}, 1)``."""
        return (1, *(int(core.shape[2]) for core in self.cores))

    @property
    def shape(self) -> tuple[int, ...]:
        """The mode sizes ``(n_1, ..., n_d)`` of the tensor the train represents."""
        return tuple(int(core.shape[1]) for core in self.cores)

    @property
    def num_params(self) -> int:
        return int(sum(core.numel() for core in self.cores))

    def full(self) -> torch.Tensor:
        """The d-way tensor, contracted left to right."""
        return tt_to_tensor(self.cores)


def tt_to_tensor(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract TT ``cores`` ``(r_{k-1}, n_k, r_k)`` into the full tensor ``(n_1, ..., n_d)``."""
    if not cores:
        raise ValueError("a tensor train needs at least one core")
    shape = [int(core.shape[1]) for core in cores]
    result = cores[0].reshape(-1, cores[0].shape[2])  # (n_1, r_1)
    for core in cores[1:]:
        rank_in, size, rank_out = core.shape
        result = (result @ core.reshape(rank_in, size * rank_out)).reshape(-1, rank_out)
    return result.reshape(shape)


def _bond_caps(max_rank: int | Sequence[int] | None, bonds: int) -> list[int | None]:
    """``max_rank`` resolved to one cap (or None) per bond, validated."""
    if max_rank is None:
        return [None] * bonds
    caps = [max_rank] * bonds if isinstance(max_rank, int) else list(max_rank)
    if len(caps) != bonds:
        raise RankError(
            f"max_rank needs one rank per TT bond ({bonds} for this tensor), got {max_rank!r}"
        )
    for cap in caps:
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise RankError(f"TT ranks must be integers >= 1, got {max_rank!r}")
    return list(caps)


def _truncation_rank(values: torch.Tensor, delta: float | None, cap: int | None) -> int:
    """Smallest rank whose discarded tail has norm <= ``delta``, then capped by ``cap``; >= 1."""
    rank = int(values.shape[0])
    if delta is not None:
        # tail[r] = ||values[r:]||, so rank r is acceptable when tail[r] <= delta.
        squares = values.square()
        tail = torch.flip(torch.cumsum(torch.flip(squares, [0]), 0), [0]).sqrt()
        ok = torch.nonzero(tail <= delta).flatten()
        rank = int(ok[0]) if ok.numel() else rank
    if cap is not None:
        rank = min(rank, cap)
    return max(rank, 1)


def _fix_pair_signs(u: torch.Tensor, vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip singular pairs so each column of ``u`` has a positive largest-magnitude entry."""
    idx = u.abs().argmax(dim=0)
    signs = torch.sign(u[idx, torch.arange(u.shape[1], device=u.device)])
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return u * signs, vh * signs[:, None]


def tt_svd(
    tensor: torch.Tensor,
    *,
    max_rank: int | Sequence[int] | None = None,
    rel_error: float | None = None,
) -> TTResult:
    """TT decomposition of ``tensor`` by sequential truncated SVDs (TT-SVD).

    ``max_rank`` caps every TT rank (an int) or each of the ``d - 1`` bonds (a sequence).
    ``rel_error`` is a target relative Frobenius error ``eps``: each truncation drops the
    smallest singular values whose norm stays within ``eps / sqrt(d - 1) * ||tensor||``, which
    guarantees ``||tensor - full|| <= eps * ||tensor||`` when no ``max_rank`` cuts deeper. With
    neither, the train is exact (ranks are the unfolding ranks' generic upper bounds). Computed
    in float64 with deterministic singular-vector signs; cores come back in ``tensor``'s dtype
    (float64 for non-floating input).
    """
    if tensor.ndim < 1:
        raise ValueError("tt_svd needs a tensor with at least one dimension")
    if tensor.numel() == 0:
        raise ValueError(f"tt_svd needs a non-empty tensor, got shape {tuple(tensor.shape)}")
    if rel_error is not None and not (rel_error >= 0.0 and math.isfinite(rel_error)):
        raise ValueError(f"rel_error must be a finite number >= 0, got {rel_error!r}")
    shape = [int(n) for n in tensor.shape]
    d = len(shape)
    caps = _bond_caps(max_rank, d - 1)
    out_dtype = tensor.dtype if tensor.is_floating_point() else torch.float64
    with torch.no_grad(), threads_for(tensor.numel()):
        work = as_float64(tensor)
        delta = None
        if rel_error is not None and d > 1:
            delta = rel_error / math.sqrt(d - 1) * float(torch.linalg.vector_norm(work))
        cores: list[torch.Tensor] = []
        rank = 1
        remainder = work.reshape(shape[0], -1)
        for k in range(d - 1):
            remainder = remainder.reshape(rank * shape[k], -1)
            u, s, vh = torch.linalg.svd(remainder, full_matrices=False)
            u, vh = _fix_pair_signs(u, vh)
            new_rank = _truncation_rank(s, delta, caps[k])
            cores.append(u[:, :new_rank].reshape(rank, shape[k], new_rank))
            remainder = s[:new_rank, None] * vh[:new_rank]
            rank = new_rank
        cores.append(remainder.reshape(rank, shape[-1], 1))
    return TTResult(cores=tuple(core.to(out_dtype) for core in cores))


@dataclass(frozen=True)
class TTMatrix:
    """A matrix ``(prod m_k, prod n_k)`` in TT-matrix format (Oseledets 2010; Novikov et al. 2015).

    Core ``k`` has shape ``(r_{k-1}, m_k, n_k, r_k)``; row index ``i`` has digits
    ``(i_1, ..., i_d)`` in C order over ``out_modes`` (``i_1`` most significant), the column index
    likewise over ``in_modes``, and ``W[i, j] = G_1[:, i_1, j_1, :] @ ... @ G_d[:, i_d, j_d, :]``.
    """

    cores: tuple[torch.Tensor, ...]

    @property
    def ranks(self) -> tuple[int, ...]:
        return (1, *(int(core.shape[3]) for core in self.cores))

    @property
    def out_modes(self) -> tuple[int, ...]:
        return tuple(int(core.shape[1]) for core in self.cores)

    @property
    def in_modes(self) -> tuple[int, ...]:
        return tuple(int(core.shape[2]) for core in self.cores)

    @property
    def num_params(self) -> int:
        return int(sum(core.numel() for core in self.cores))

    def full(self) -> torch.Tensor:
        return tt_matrix_to_matrix(self.cores)


def _product(values: Sequence[int]) -> int:
    return math.prod(int(v) for v in values)


def tt_matrix_to_matrix(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The full ``(prod m_k, prod n_k)`` matrix of TT-matrix ``cores`` ``(r, m_k, n_k, r')``."""
    out_modes = [int(core.shape[1]) for core in cores]
    in_modes = [int(core.shape[2]) for core in cores]
    merged = [core.reshape(core.shape[0], -1, core.shape[3]) for core in cores]
    d = len(cores)
    tensor = tt_to_tensor(merged).reshape([s for m, n in zip(out_modes, in_modes) for s in (m, n)])
    # (m_1, n_1, ..., m_d, n_d) -> (m_1, ..., m_d, n_1, ..., n_d)
    tensor = tensor.permute([*range(0, 2 * d, 2), *range(1, 2 * d, 2)])
    return tensor.reshape(_product(out_modes), _product(in_modes))


def tt_matrix_bond_limits(out_modes: Sequence[int], in_modes: Sequence[int]) -> tuple[int, ...]:
    """Largest useful rank of each of the ``d - 1`` bonds: ``min(prod_{<=k} mn, prod_{>k} mn)``."""
    sizes = [int(m) * int(n) for m, n in zip(out_modes, in_modes)]
    return tuple(
        min(_product(sizes[: k + 1]), _product(sizes[k + 1 :])) for k in range(len(sizes) - 1)
    )


def tt_matrix_ranks(
    out_modes: Sequence[int], in_modes: Sequence[int], max_rank: int | Sequence[int]
) -> tuple[int, ...]:
    """The ranks ``(1, r_1, ..., r_{d-1}, 1)`` that :func:`tt_matrix_svd` returns for ``max_rank``.

    ``r_k = min(cap_k, r_{k-1} m_k n_k, prod_{>k} m n)``: the cap, or the unfolding's size when
    that is smaller. Layers use it to build their structure from ``max_rank`` alone.
    """
    sizes = [int(m) * int(n) for m, n in zip(out_modes, in_modes)]
    caps = _bond_caps(max_rank, len(sizes) - 1)
    ranks = [1]
    for k, cap in enumerate(caps):
        limit = min(ranks[-1] * sizes[k], _product(sizes[k + 1 :]))
        ranks.append(limit if cap is None else min(cap, limit))
    return (*ranks, 1)


def _check_modes(matrix: torch.Tensor, out_modes: Sequence[int], in_modes: Sequence[int]) -> None:
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(matrix.shape)}")
    if len(out_modes) != len(in_modes) or not out_modes:
        raise ValueError(
            f"out_modes and in_modes must have the same, non-zero length, got {tuple(out_modes)} "
            f"and {tuple(in_modes)}"
        )
    if any(int(m) < 1 for m in (*out_modes, *in_modes)):
        raise ValueError(f"modes must be >= 1, got {tuple(out_modes)} and {tuple(in_modes)}")
    if _product(out_modes) != matrix.shape[0] or _product(in_modes) != matrix.shape[1]:
        raise ValueError(
            f"modes {tuple(out_modes)} x {tuple(in_modes)} do not multiply to the matrix shape "
            f"{tuple(matrix.shape)}"
        )


def tt_matrix_svd(
    matrix: torch.Tensor,
    out_modes: Sequence[int],
    in_modes: Sequence[int],
    *,
    max_rank: int | Sequence[int] | None = None,
    rel_error: float | None = None,
) -> TTMatrix:
    """TT-matrix of ``matrix`` (rows ``prod out_modes``, columns ``prod in_modes``) by TT-SVD.

    The matrix is reshaped to ``(m_1, ..., m_d, n_1, ..., n_d)``, its index pairs are interleaved
    into modes ``(m_1 n_1, ..., m_d n_d)`` and :func:`tt_svd` runs on that d-way tensor with the
    same ``max_rank`` / ``rel_error`` meaning.
    """
    _check_modes(matrix, out_modes, in_modes)
    d = len(out_modes)
    tensor = matrix.reshape([*out_modes, *in_modes])
    tensor = tensor.permute([p for k in range(d) for p in (k, d + k)])
    merged = tensor.reshape([int(m) * int(n) for m, n in zip(out_modes, in_modes)])
    train = tt_svd(merged, max_rank=max_rank, rel_error=rel_error)
    cores = tuple(
        core.reshape(core.shape[0], int(m), int(n), core.shape[2])
        for core, m, n in zip(train.cores, out_modes, in_modes)
    )
    return TTMatrix(cores=cores)
