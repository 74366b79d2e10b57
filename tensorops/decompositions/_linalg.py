"""Small float64 linear-algebra helpers shared by the decompositions."""

from __future__ import annotations

import torch


def as_float64(tensor: torch.Tensor) -> torch.Tensor:
    """A detached float64 copy on the same device (decompositions never track gradients)."""
    return tensor.detach().to(torch.float64)


def leading_left_singular_vectors(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All left singular vectors of ``matrix`` (m, n), ordered by decreasing singular value.

    Returns ``(u, s)`` with ``u`` of shape (m, k) and ``s`` of shape (k,), k = min(m, n).
    When the matrix is wide (m much smaller than n) the eigendecomposition of the m x m Gram
    matrix is much cheaper than an SVD and gives the same subspace; signs are fixed so that the
    largest entry of each vector is positive, which makes results reproducible.
    """
    m, n = matrix.shape
    if m <= n:
        gram = matrix @ matrix.T  # (m, m)
        eigenvalues, eigenvectors = torch.linalg.eigh(gram)
        order = torch.argsort(eigenvalues, descending=True)
        u = eigenvectors[:, order]
        s = eigenvalues[order].clamp_min(0.0).sqrt()
    else:
        u, s, _ = torch.linalg.svd(matrix, full_matrices=False)
    return fix_signs(u), s


def fix_signs(u: torch.Tensor) -> torch.Tensor:
    """Flip columns so that each column's largest-magnitude entry is positive."""
    if u.numel() == 0:
        return u
    idx = u.abs().argmax(dim=0)
    signs = torch.sign(u[idx, torch.arange(u.shape[1], device=u.device)])
    signs[signs == 0] = 1.0
    return u * signs


def relative_error(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Frobenius-norm relative error ``||ref - approx|| / ||ref||`` (0 when both are zero)."""
    ref = as_float64(reference)
    diff = torch.linalg.vector_norm(ref - as_float64(approximation))
    norm = torch.linalg.vector_norm(ref)
    if float(norm) == 0.0:
        return 0.0 if float(diff) == 0.0 else float("inf")
    return float(diff / norm)
