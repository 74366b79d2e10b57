"""Kronecker products against torch.kron and the strong Kronecker product against its definition."""

from __future__ import annotations

import pytest
import torch

from tensorops.decompositions import tt_matrix_svd, tt_matrix_to_matrix
from tensorops.kron import kron, strong_kron, strong_kron_chain, tt_matrix_cores_as_blocks


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(
    "a_shape, b_shape",
    [
        ((3, 4), (2, 5)),
        ((1, 3), (4, 1)),
        ((2, 3, 4), (3, 1, 2)),
        ((5,), (3,)),
        ((2, 2, 2, 2), (1, 3, 1, 2)),
    ],
)
def test_kron_matches_torch_kron(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> None:
    a, b = _randn(*a_shape, seed=1), _randn(*b_shape, seed=2)
    assert torch.equal(kron(a, b), torch.kron(a, b))


def test_kron_rejects_unequal_orders() -> None:
    with pytest.raises(ValueError, match="equal order"):
        kron(torch.ones(2, 2), torch.ones(2))


def _strong_kron_by_definition(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r0, r1, _, _ = a.shape
    r2 = b.shape[1]
    rows = []
    for i in range(r0):
        row = []
        for k in range(r2):
            row.append(torch.stack([torch.kron(a[i, j], b[j, k]) for j in range(r1)]).sum(0))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def test_strong_kron_matches_definition() -> None:
    a, b = _randn(2, 3, 4, 2, seed=3), _randn(3, 4, 3, 5, seed=4)
    out = strong_kron(a, b)
    assert out.shape == (2, 4, 12, 10)
    assert torch.allclose(out, _strong_kron_by_definition(a, b), atol=1e-12)


def test_strong_kron_rejects_mismatched_blocks() -> None:
    with pytest.raises(ValueError, match="block"):
        strong_kron(torch.ones(2, 3, 1, 1), torch.ones(2, 3, 1, 1))
    with pytest.raises(ValueError, match="block matrix"):
        strong_kron(torch.ones(2, 3), torch.ones(3, 2, 1, 1))


def _tt_matrix_naive(cores: list[torch.Tensor]) -> torch.Tensor:
    """W[i, j] = G_1[:, i_1, j_1, :] @ ... @ G_d[:, i_d, j_d, :], entry by entry."""
    out_modes = [c.shape[1] for c in cores]
    in_modes = [c.shape[2] for c in cores]
    rows, cols = int(torch.tensor(out_modes).prod()), int(torch.tensor(in_modes).prod())
    w = torch.empty(rows, cols, dtype=cores[0].dtype)
    for i in range(rows):
        i_digits = torch.unravel_index(torch.tensor(i), out_modes)
        for j in range(cols):
            j_digits = torch.unravel_index(torch.tensor(j), in_modes)
            acc = torch.ones(1, 1, dtype=cores[0].dtype)
            for core, ik, jk in zip(cores, i_digits, j_digits):
                acc = acc @ core[:, int(ik), int(jk), :]
            w[i, j] = acc[0, 0]
    return w


def test_tt_matrix_is_the_strong_kronecker_product_of_its_cores() -> None:
    ranks, outs, ins = (1, 2, 3, 1), (2, 3, 2), (3, 1, 2)
    cores = [_randn(ranks[k], outs[k], ins[k], ranks[k + 1], seed=10 + k) for k in range(3)]
    naive = _tt_matrix_naive(cores)
    product = strong_kron_chain(tt_matrix_cores_as_blocks(cores))
    assert product.shape == (1, 1, 12, 6)
    assert torch.allclose(product[0, 0], naive, atol=1e-12)
    assert torch.allclose(tt_matrix_to_matrix(cores), naive, atol=1e-12)


def test_tt_matrix_svd_round_trips_through_strong_kron() -> None:
    w = _randn(12, 20, seed=5)
    train = tt_matrix_svd(w, (3, 2, 2), (5, 2, 2))
    assert torch.allclose(strong_kron_chain(tt_matrix_cores_as_blocks(train.cores))[0, 0], w)
