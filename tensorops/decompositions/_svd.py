"""Truncated SVD of a matrix: ``M ≈ left @ right`` with inner dimension ``rank``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tensorops.decompositions._linalg import as_float64, relative_error
from tensorops.exceptions import RankError


@dataclass(frozen=True)
class SVDResult:
    """A rank-``rank`` factorisation of an (m, n) matrix.

    ``left`` (m, rank) holds the left singular vectors scaled by the singular values and
    ``right`` (rank, n) the right singular vectors, so ``left @ right`` is the best rank-``rank``
    approximation in the Frobenius norm (Eckart-Young).
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


def truncated_svd(matrix: torch.Tensor, rank: int) -> SVDResult:
    """Best rank-``rank`` approximation of a 2-D ``matrix``, computed in float64.

    The factors are cast back to the input's dtype; ``relative_error`` is measured in float64.
    """
    if matrix.ndim != 2:
        raise ValueError(f"truncated_svd expects a 2-D matrix, got shape {tuple(matrix.shape)}")
    validate_svd_rank((int(matrix.shape[0]), int(matrix.shape[1])), rank)
    with torch.no_grad():
        m64 = as_float64(matrix)
        u, s, vh = torch.linalg.svd(m64, full_matrices=False)
        left = u[:, :rank] * s[:rank]
        right = vh[:rank]
        error = relative_error(m64, left @ right)
    return SVDResult(
        left=left.to(matrix.dtype),
        right=right.to(matrix.dtype),
        singular_values=s[:rank].to(matrix.dtype),
        relative_error=error,
    )
