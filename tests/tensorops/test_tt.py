"""TT-SVD and QTT-SVD against ground truth: exact trains, planted ranks, error bounds."""

from __future__ import annotations

import math

import pytest
import torch

import tensorops as to
from tensorops.decompositions import (
    cp_als_nway,
    cp_nway_to_tensor,
    dequantise,
    padded_size,
    qtt_svd,
    quantise,
    tt_matrix_ranks,
    tt_matrix_svd,
    tt_to_tensor,
)
from tensorops.exceptions import RankError


def planted_train(shape: tuple[int, ...], ranks: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A float64 tensor of TT ranks ``ranks`` (inner bonds) built from random cores."""
    g = torch.Generator().manual_seed(seed)
    bonds = (1, *ranks, 1)
    cores = [
        torch.randn(bonds[k], n, bonds[k + 1], generator=g, dtype=torch.float64)
        for k, n in enumerate(shape)
    ]
    return tt_to_tensor(cores)


def test_full_rank_train_is_exact() -> None:
    x = torch.randn(3, 4, 5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = to.tt_svd(x)
    assert result.ranks == (1, 3, 10, 2, 1)  # min of the unfolding sides
    assert result.shape == (3, 4, 5, 2)
    assert torch.allclose(result.full(), x, atol=1e-12)


def test_planted_ranks_are_recovered() -> None:
    x = planted_train((4, 5, 6, 3), (2, 3, 2))
    result = to.tt_svd(x, rel_error=1e-10)
    assert result.ranks == (1, 2, 3, 2, 1)
    assert to.decompositions.relative_error(x, result.full()) < 1e-10
    capped = to.tt_svd(x, max_rank=3)
    assert capped.ranks == (1, 3, 3, 3, 1)  # no tolerance given: the caps decide
    assert torch.allclose(capped.full(), x, atol=1e-9)


def test_cores_have_documented_shapes_and_left_orthonormality() -> None:
    x = planted_train((3, 4, 5), (2, 3))
    result = to.tt_svd(x, max_rank=(2, 3))
    for k, core in enumerate(result.cores):
        assert core.shape == (result.ranks[k], x.shape[k], result.ranks[k + 1])
    for core in result.cores[:-1]:
        left = core.reshape(-1, core.shape[2])
        assert torch.allclose(left.T @ left, torch.eye(left.shape[1], dtype=torch.float64))


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.5])
def test_error_bound_is_respected(eps: float) -> None:
    signal = planted_train((4, 4, 4, 4, 4), (2, 3, 3, 2), seed=2)
    noise = torch.randn(
        4, 4, 4, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    x = signal + 0.03 * noise * signal.norm() / noise.norm()
    result = to.tt_svd(x, rel_error=eps)
    error = to.decompositions.relative_error(x, result.full())
    assert error <= eps + 1e-12
    # The bound is not met by giving up compression: ranks fall below the exact ones.
    assert sum(result.ranks) < sum(to.tt_svd(x).ranks)


def test_max_rank_and_rel_error_combine_and_error_matches_singular_tails() -> None:
    x = torch.randn(5, 6, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    result = to.tt_svd(x, max_rank=2, rel_error=1e-3)
    assert max(result.ranks) == 2
    # With a single truncation (d = 2) the TT-SVD is the Eckart-Young optimum.
    m = x.reshape(5, 42)
    two = to.tt_svd(m, max_rank=3)
    s = torch.linalg.svdvals(m)
    expected = float(s[3:].square().sum().sqrt() / s.square().sum().sqrt())
    assert to.decompositions.relative_error(m, two.full()) == pytest.approx(expected, rel=1e-9)


def test_deterministic_and_dtype_preserved() -> None:
    x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(4))
    a, b = to.tt_svd(x, max_rank=3), to.tt_svd(x.clone(), max_rank=3)
    assert all(core.dtype == torch.float32 for core in a.cores)
    assert all(torch.equal(p, q) for p, q in zip(a.cores, b.cores))
    # Signs are pinned: every column of a left core has a positive largest entry.
    for core in a.cores[:-1]:
        left = core.reshape(-1, core.shape[2])
        idx = left.abs().argmax(dim=0)
        assert (left[idx, torch.arange(left.shape[1])] > 0).all()


def test_one_way_tensor_is_a_single_core() -> None:
    x = torch.arange(5.0)
    result = to.tt_svd(x, rel_error=0.1)
    assert result.ranks == (1, 1)
    assert torch.equal(result.full(), x)


def test_bad_arguments_are_rejected_with_specific_errors() -> None:
    x = torch.randn(3, 4, 5)
    with pytest.raises(RankError, match="one rank per TT bond"):
        to.tt_svd(x, max_rank=(2, 2, 2))
    with pytest.raises(RankError, match=">= 1"):
        to.tt_svd(x, max_rank=0)
    with pytest.raises(ValueError, match="rel_error"):
        to.tt_svd(x, rel_error=-1.0)
    with pytest.raises(ValueError, match="rel_error"):
        to.tt_svd(x, rel_error=math.nan)
    with pytest.raises(ValueError, match="at least one dimension"):
        to.tt_svd(torch.tensor(1.0))


# --- QTT ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, base, padded", [(3, 2, 4), (8, 2, 8), (1, 2, 2), (5, 2, 8), (10, 3, 27)]
)
def test_padding_rule(size: int, base: int, padded: int) -> None:
    assert padded_size(size, base) == padded


def test_quantise_layout_and_round_trip() -> None:
    x = torch.arange(24.0).reshape(3, 8)
    q = quantise(x, 2)
    assert q.shape == (2,) * 5  # 2 digits for the 3 rows (padded to 4), 3 for the 8 columns
    assert float(q.reshape(4, 8)[3].abs().sum()) == 0.0  # the padded row is zero
    assert (
        q[1, 0, 0, 1, 1] == x[2, 3]
    )  # row 2 = (1, 0), column 3 = (0, 1, 1), most significant first
    assert torch.equal(dequantise(q, (3, 8), 2), x)


def test_qtt_of_sampled_sine_has_rank_two() -> None:
    # sin(a (i + j)) = sin(a i) cos(a j) + cos(a i) sin(a j): every QTT unfolding has rank 2.
    i = torch.arange(256, dtype=torch.float64)
    result = qtt_svd(torch.sin(0.1 * i), rel_error=1e-10)
    assert result.ranks == (1, 2, 2, 2, 2, 2, 2, 2, 1)
    assert to.decompositions.relative_error(torch.sin(0.1 * i), result.full()) < 1e-10


@pytest.mark.parametrize("eps", [1e-12, 0.1, 0.4])
def test_qtt_error_bound_holds_on_padded_original(eps: float) -> None:
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    result = qtt_svd(x, rel_error=eps)
    assert result.full().shape == (5, 12)
    assert to.decompositions.relative_error(x, result.full()) <= eps + 1e-12


def test_qtt_rejects_bad_base() -> None:
    with pytest.raises(ValueError, match="base"):
        qtt_svd(torch.ones(4), base=1)


# --- TT-matrix ----------------------------------------------------------------------------------


def test_tt_matrix_exact_and_ranks_follow_the_formula() -> None:
    w = torch.randn(12, 20, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    outs, ins = (3, 2, 2), (5, 2, 2)
    exact = tt_matrix_svd(w, outs, ins)
    assert torch.allclose(exact.full(), w, atol=1e-12)
    for cap in (1, 2, 5, 100):
        train = tt_matrix_svd(w, outs, ins, max_rank=cap)
        assert train.ranks == tt_matrix_ranks(outs, ins, cap)
        assert (train.out_modes, train.in_modes) == (outs, ins)


def test_kronecker_product_has_tt_matrix_rank_one() -> None:
    g = torch.Generator().manual_seed(8)
    a = torch.randn(3, 4, generator=g, dtype=torch.float64)
    b = torch.randn(2, 5, generator=g, dtype=torch.float64)
    train = tt_matrix_svd(torch.kron(a, b), (3, 2), (4, 5), rel_error=1e-12)
    assert train.ranks == (1, 1, 1)
    assert torch.allclose(train.full(), torch.kron(a, b))


def test_tt_matrix_rejects_wrong_modes() -> None:
    with pytest.raises(ValueError, match="multiply"):
        tt_matrix_svd(torch.ones(6, 4), (2, 2), (2, 2))


# --- N-way CP-ALS -------------------------------------------------------------------------------


def test_cp_als_nway_recovers_a_planted_rank() -> None:
    g = torch.Generator().manual_seed(9)
    factors = tuple(torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (4, 5, 3, 4, 2))
    x = cp_nway_to_tensor(torch.ones(3, dtype=torch.float64), factors)
    result = cp_als_nway(x, 3, n_iter_max=300, tol=1e-14, seed=1)
    assert result.relative_error < 1e-6
    # Monotone up to the round-off of the residual formula, sqrt(float64 eps) ~ 1.5e-8.
    assert all(b <= a + 1e-7 for a, b in zip(result.errors, result.errors[1:]))
    again = cp_als_nway(x, 3, n_iter_max=300, tol=1e-14, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(result.factors, again.factors))
