"""Small float64 linear-algebra helpers shared by the decompositions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def as_float64(tensor: torch.Tensor) -> torch.Tensor:
    """A detached float64 copy on the same device (decompositions never track gradients)."""
    return tensor.detach().to(torch.float64)


def leading_left_singular_vectors(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A full orthonormal basis of the column space side of ``matrix`` (m, n), best first.

    Returns ``(u, s)`` with ``u`` of shape (m, m) and ``s`` of shape (m,): the left singular
    vectors ordered by decreasing singular value, completed by an orthonormal basis of the null
    space (singular value 0) when m > n, so that any rank up to m can be truncated from it. It is
    computed from the eigendecomposition of the m x m Gram matrix, which for the wide unfoldings
    of conv kernels is much cheaper than an SVD and spans the same leading subspaces. Signs are
    fixed so that each vector's largest entry is positive, which makes results reproducible.
    """
    gram = matrix @ matrix.T  # (m, m)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    order = torch.argsort(eigenvalues, descending=True)
    u = eigenvectors[:, order]
    s = eigenvalues[order].clamp_min(0.0).sqrt()
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


#: Below this many tensor entries, decompositions run on one intra-op thread: the many tiny
#: kernels of an ALS sweep are dominated by thread hand-off, which on a busy machine can make
#: two threads hundreds of times slower than one.
SMALL_WORK_ENTRIES = 1 << 20


@contextmanager
def threads_for(entries: int) -> Iterator[None]:
    """Run the block single-threaded when the problem has fewer than ``SMALL_WORK_ENTRIES``."""
    if entries >= SMALL_WORK_ENTRIES or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
