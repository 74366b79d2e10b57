"""CP of a tensor of any order by alternating least squares (the 4-D :func:`cp_als` is specialised
to convolution kernels).

``X[i_1, ..., i_d] ≈ Σ_r weights[r] · A_1[i_1, r] ··· A_d[i_d, r]``. Factors start from seeded
Gaussian columns; every sweep solves each mode's least-squares problem exactly, so the error never
rises (the per-sweep errors come from a Gram-matrix formula, exact to about ``sqrt(eps) ~ 1e-8``
relative; ``relative_error`` is computed from the rebuilt tensor). The MTTKRP of each mode is
an einsum over chunks of columns, so memory stays at
``numel / n_mode * chunk`` whatever the rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tensorops.decompositions._linalg import as_float64, relative_error, threads_for
from tensorops.exceptions import RankError

#: Columns per MTTKRP einsum: bounds the intermediate to ``numel / n_mode * 64`` entries.
MTTKRP_CHUNK = 64


@dataclass(frozen=True)
class CPNResult:
    """Factors ``(n_k, rank)`` with unit-norm columns, scaled by ``weights``."""

    weights: torch.Tensor
    factors: tuple[torch.Tensor, ...]
    relative_error: float
    errors: tuple[float, ...]  # relative error after each sweep (non-increasing up to ~1e-8)

    @property
    def rank(self) -> int:
        return int(self.weights.shape[0])

    def full(self) -> torch.Tensor:
        return cp_nway_to_tensor(self.weights, self.factors)


def cp_nway_to_tensor(weights: torch.Tensor, factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Rebuild the full tensor from CP weights and factors of any order."""
    operands: list[object] = [weights, [len(factors)]]
    for k, factor in enumerate(factors):
        operands += [factor, [k, len(factors)]]
    return torch.einsum(*operands, list(range(len(factors))))


#: The MTTKRP contracts a block of modes whose sizes multiply to about this in one matrix product.
GROUP_ENTRIES = 256


def _mode_group(shape: tuple[int, ...], mode: int) -> list[int]:
    """Consecutive modes at the end of ``shape`` farther from ``mode``, up to GROUP_ENTRIES."""
    d = len(shape)
    candidates = list(range(mode)) if mode >= d - 1 - mode else list(range(d - 1, mode, -1))
    group: list[int] = []
    size = 1
    for k in candidates:
        if group and size >= GROUP_ENTRIES:
            break
        group.append(k)
        size *= shape[k]
    return sorted(group)


def _mttkrp(x: torch.Tensor, factors: list[torch.Tensor], mode: int) -> torch.Tensor:
    """``X_(mode) @ khatri_rao(other factors)`` of shape ``(n_mode, rank)``, in column chunks.

    A block of consecutive modes at one end of the tensor (away from ``mode``) is contracted by
    one matrix product with the Khatri-Rao product of its factors (the bulk of the work, at
    matrix-product speed); the remaining modes follow by broadcast products and sums.
    """
    shape = tuple(int(n) for n in x.shape)
    rank = factors[0].shape[1]
    group = _mode_group(shape, mode)
    rest = [k for k in range(len(shape)) if k not in group]  # includes ``mode``, in order
    group_size = math.prod(shape[k] for k in group)
    front = group[0] == 0
    flat = x.reshape(group_size, -1).T if front else x.reshape(-1, group_size)
    parts = []
    for start in range(0, rank, MTTKRP_CHUNK):
        chunk = slice(start, min(start + MTTKRP_CHUNK, rank))
        columns = chunk.stop - chunk.start
        khatri_rao = factors[group[0]][:, chunk]
        for k in group[1:]:  # C order: the first mode of the group varies slowest
            khatri_rao = (khatri_rao[:, None, :] * factors[k][None, :, chunk]).reshape(-1, columns)
        state = flat @ khatri_rao  # (prod of rest, c)
        dims = [shape[k] for k in rest]
        for position in reversed(range(len(rest))):
            k = rest[position]
            if k == mode:
                continue
            pre, post = math.prod(dims[:position]), math.prod(dims[position + 1 :])
            factor = factors[k][:, chunk]
            state = (state.reshape(pre, dims[position], post, columns) * factor[:, None, :]).sum(1)
            dims.pop(position)
        parts.append(state.reshape(shape[mode], columns))
    return torch.cat(parts, dim=1)


def cp_als_nway(
    tensor: torch.Tensor,
    rank: int,
    *,
    n_iter_max: int = 50,
    tol: float = 1e-7,
    seed: int = 0,
) -> CPNResult:
    """CP decomposition of ``tensor`` (any order >= 2) at ``rank`` by ALS in float64.

    Sweeps stop after ``n_iter_max`` or when one lowers the relative error by less than ``tol``.
    ``seed`` fixes the Gaussian initial factors, so equal seeds give equal results.
    """
    if tensor.ndim < 2:
        raise ValueError(f"CP needs a tensor of order >= 2, got shape {tuple(tensor.shape)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise RankError(f"CP rank must be an integer >= 1, got {rank!r}")
    if n_iter_max < 1:
        raise ValueError(f"n_iter_max must be >= 1, got {n_iter_max}")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad(), threads_for(tensor.numel() * rank):
        x = as_float64(tensor)
        x_sq = float((x * x).sum())
        factors = [
            torch.randn(int(n), rank, generator=generator, dtype=torch.float64).to(x.device)
            for n in x.shape
        ]
        grams = [f.T @ f for f in factors]
        errors: list[float] = []
        for _ in range(n_iter_max):
            for mode in range(x.ndim):
                gram = torch.ones(rank, rank, dtype=torch.float64, device=x.device)
                for k, g in enumerate(grams):
                    if k != mode:
                        gram = gram * g
                mttkrp = _mttkrp(x, factors, mode)
                factor = mttkrp @ torch.linalg.pinv(gram, hermitian=True)
                if mode < x.ndim - 1:  # the last factor carries the scale
                    norms = torch.linalg.vector_norm(factor, dim=0)
                    factor = factor / torch.where(norms > 0, norms, torch.ones_like(norms))
                factors[mode] = factor
                grams[mode] = factor.T @ factor
            # ||x - model||² = ||x||² - 2 <mttkrp_last, A_last> + sum(Hadamard of all grams).
            full_gram = torch.ones(rank, rank, dtype=torch.float64, device=x.device)
            for g in grams:
                full_gram = full_gram * g
            residual = x_sq - 2.0 * float((mttkrp * factors[-1]).sum()) + float(full_gram.sum())
            errors.append((max(0.0, residual) / max(x_sq, 1e-300)) ** 0.5)
            if len(errors) > 1 and errors[-2] - errors[-1] < tol:
                break
        norms = torch.linalg.vector_norm(factors[-1], dim=0)
        factors[-1] = factors[-1] / torch.where(norms > 0, norms, torch.ones_like(norms))
        weights = norms
        error = relative_error(x, cp_nway_to_tensor(weights, tuple(factors)))
    dtype = tensor.dtype if tensor.is_floating_point() else torch.float64
    return CPNResult(
        weights=weights.to(dtype),
        factors=tuple(f.to(dtype) for f in factors),
        relative_error=error,
        errors=tuple(errors),
    )
