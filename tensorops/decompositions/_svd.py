"""Truncated SVD of a matrix: ``M ≈ left @ right`` with inner dimension ``rank``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tensorops.decompositions._linalg import (
    leading_left_singular_vectors,
    relative_error,
    threads_for,
)
from tensorops.exceptions import RankError


@dataclass(frozen=True)
class SVDResult:
    """A rank-``rank`` factorisation of an (m, n) matrix.

    ``left`` (m, rank) @ ``right`` (rank, n) is the best rank-``rank`` approximation in the
    Frobenius norm (Eckart-Young); the factor on the matrix's smaller side is orthonormal.
    """

    left: torch.Tensor
    right: torch.Tensor
    singular_values: torch.Tensor
    relative_error: float

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    @property
    def num_params(self) -> int:
        return int(self.left.numel() + self.right.numel())

    def to_tensor(self) -> torch.Tensor:
        return self.left @ self.right


def validate_svd_rank(shape: tuple[int, int], rank: int) -> int:
    """Return ``rank`` if it is an int in ``[1, min(shape)]``; raise :class:`RankError` if not."""
    limit = min(shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise RankError(
            f"SVD rank must be an integer in [1, {limit}] for shape {shape}, got {rank!r}"
        )
    return rank


#: Matrices with more entries than this are factorised from a float32 Gram matrix: a float64
#: decomposition of, say, VGG's 4096 x 25088 classifier takes minutes on a laptop-class CPU.
LARGE_MATRIX_ENTRIES = 1 << 24


def truncated_svd(matrix: torch.Tensor, rank: int) -> SVDResult:
    """Best rank-``rank`` approximation of a 2-D ``matrix``.

    The leading singular subspace of the smaller side comes from the eigendecomposition of its
    Gram matrix, in float64 (float32 above ``LARGE_MATRIX_ENTRIES`` entries). One factor is
    orthonormal and the other carries the singular values. Factors are cast back to the input's
    dtype; ``relative_error`` is exact for ordinary sizes and, for large matrices, derived from the
    singular values (Eckart-Young).
    """
    if matrix.ndim != 2:
        raise ValueError(f"truncated_svd expects a 2-D matrix, got shape {tuple(matrix.shape)}")
    validate_svd_rank((int(matrix.shape[0]), int(matrix.shape[1])), rank)
    large = matrix.numel() > LARGE_MATRIX_ENTRIES
    with torch.no_grad(), threads_for(matrix.numel()):
        work = matrix.detach().to(torch.float32 if large else torch.float64)
        tall = work.shape[0] > work.shape[1]
        basis, values = leading_left_singular_vectors(work.T if tall else work)
        top = basis[:, :rank]
        if tall:  # M ≈ (M @ top) @ top.T
            left, right = work @ top, top.T
        else:  # M ≈ top @ (top.T @ M)
            left, right = top, top.T @ work
        if large:
            total = float(torch.linalg.vector_norm(work, dtype=torch.float64)) ** 2
            kept = float(values[:rank].double().square().sum())
            error = (max(0.0, total - kept) / total) ** 0.5 if total > 0 else 0.0
        else:
            error = relative_error(work, left @ right)
    return SVDResult(
        left=left.to(matrix.dtype),
        right=right.to(matrix.dtype),
        singular_values=values[:rank].to(matrix.dtype),
        relative_error=error,
    )
