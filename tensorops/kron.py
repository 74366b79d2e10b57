"""Kronecker products: the ordinary one and the strong Kronecker product of block matrices.

The strong Kronecker product (de Launey and Seberry, 1994) of an ``r0 x r1`` block matrix ``A``
(blocks ``m1 x n1``) and an ``r1 x r2`` block matrix ``B`` (blocks ``m2 x n2``) is the
``r0 x r2`` block matrix ``C`` with blocks ``C[i, k] = Σ_j A[i, j] ⊗ B[j, k]`` of size
``m1 m2 x n1 n2``: block-matrix multiplication with ``⊗`` in place of ``@``. A TT-matrix with
cores ``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)`` is the strong Kronecker product of its cores,
each read as an ``r_{k-1} x r_k`` block matrix of ``m_k x n_k`` blocks. Block matrices are stored
as 4-D tensors ``(rows of blocks, cols of blocks, block rows, block cols)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kronecker product of two tensors of equal order (``torch.kron`` semantics).

    ``out[i_1 * b.shape[0] + j_1, ...] = a[i_1, ...] * b[j_1, ...]``, computed by one broadcast
    product of interleaved views.
    """
    if a.ndim != b.ndim:
        raise ValueError(
            f"kron needs tensors of equal order, got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    order = a.ndim
    a_view = a.reshape([s for n in a.shape for s in (n, 1)])  # (a_1, 1, a_2, 1, ...)
    b_view = b.reshape([s for n in b.shape for s in (1, n)])  # (1, b_1, 1, b_2, ...)
    shape = [int(a.shape[k]) * int(b.shape[k]) for k in range(order)]
    return (a_view * b_view).reshape(shape)


def _check_block_matrix(name: str, x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(
            f"{name} must be a block matrix (block rows, block cols, m, n), got shape "
            f"{tuple(x.shape)}"
        )


def strong_kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Strong Kronecker product of block matrices ``a`` (r0, r1, m1, n1), ``b`` (r1, r2, m2, n2).

    Returns ``(r0, r2, m1 m2, n1 n2)`` with ``out[i, k] = Σ_j kron(a[i, j], b[j, k])``.
    """
    _check_block_matrix("a", a)
    _check_block_matrix("b", b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"strong_kron needs a's block columns == b's block rows, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    r0, _, m1, n1 = a.shape
    _, r2, m2, n2 = b.shape
    out = torch.einsum("ijab,jkcd->ikacbd", a, b)
    return out.reshape(r0, r2, m1 * m2, n1 * n2)


def tt_matrix_cores_as_blocks(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """TT-matrix cores ``(r, m, n, r')`` as block matrices ``(r, r', m, n)``."""
    return [core.permute(0, 3, 1, 2) for core in cores]


def strong_kron_chain(blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Left-to-right strong Kronecker product of a chain of block matrices."""
    if not blocks:
        raise ValueError("strong_kron_chain needs at least one block matrix")
    out = blocks[0]
    _check_block_matrix("blocks[0]", out)
    for block in blocks[1:]:
        out = strong_kron(out, block)
    return out
