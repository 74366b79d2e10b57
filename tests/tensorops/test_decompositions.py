"""Numerics of the decompositions against ground truth, in float64."""

from __future__ import annotations

import itertools

import pytest
import torch

from tensorops import RankError, cp_als, mode_bases, truncated_svd, tucker2
from tensorops.decompositions import cp_to_tensor, tucker2_to_tensor


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def planted_cp(shape: tuple[int, int, int, int], rank: int, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    factors = tuple(torch.randn(dim, rank, generator=g, dtype=torch.float64) for dim in shape)
    return cp_to_tensor(torch.ones(rank, dtype=torch.float64), factors)


def test_svd_full_rank_is_exact() -> None:
    m = torch.randn(30, 50, generator=_gen(), dtype=torch.float64)
    result = truncated_svd(m, 30)
    torch.testing.assert_close(result.to_tensor(), m)
    assert result.relative_error < 1e-12
    assert result.num_params == 30 * 30 + 30 * 50


def test_svd_truncation_matches_eckart_young() -> None:
    m = torch.randn(40, 20, generator=_gen(1), dtype=torch.float64)
    s = torch.linalg.svdvals(m)
    result = truncated_svd(m, 5)
    expected = float(s[5:].square().sum().sqrt() / s.square().sum().sqrt())
    assert result.relative_error == pytest.approx(expected, rel=1e-9)


def test_svd_keeps_dtype_and_rejects_bad_rank() -> None:
    m = torch.randn(8, 6)
    result = truncated_svd(m, 3)
    assert result.left.dtype == torch.float32 and result.left.shape == (8, 3)
    for bad in (0, 7, 2.5, True):
        with pytest.raises(RankError, match="SVD rank"):
            truncated_svd(m, bad)  # type: ignore[arg-type]


def test_tucker2_full_rank_is_exact() -> None:
    k = torch.randn(12, 7, 3, 3, generator=_gen(), dtype=torch.float64)
    result = tucker2(k, (12, 7))
    torch.testing.assert_close(result.to_tensor(), k)
    assert result.relative_error < 1e-12


def test_tucker2_recovers_planted_multilinear_rank() -> None:
    g = _gen(2)
    core = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    u_out = torch.linalg.qr(torch.randn(20, 4, generator=g, dtype=torch.float64))[0]
    u_in = torch.linalg.qr(torch.randn(16, 3, generator=g, dtype=torch.float64))[0]
    k = tucker2_to_tensor(core, u_out, u_in)
    result = tucker2(k, (4, 3))
    assert result.relative_error < 1e-10
    assert tucker2(k, (3, 3)).relative_error > 1e-3


def test_tucker2_hooi_never_worse_than_hosvd_and_bases_are_reused() -> None:
    k = torch.randn(24, 20, 3, 3, generator=_gen(3), dtype=torch.float64)
    hosvd = tucker2(k, (6, 5))
    hooi = tucker2(k, (6, 5), n_iter=10)
    assert hooi.relative_error <= hosvd.relative_error + 1e-12
    bases = mode_bases(k)
    shared = tucker2(k, (6, 5), bases=bases)
    torch.testing.assert_close(shared.to_tensor(), hosvd.to_tensor())


def test_tucker2_rejects_bad_ranks() -> None:
    k = torch.randn(8, 4, 3, 3)
    with pytest.raises(RankError, match="r_in"):
        tucker2(k, (8, 5))
    with pytest.raises(RankError, match="two ranks"):
        tucker2(k, (8,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="4-D"):
        tucker2(torch.randn(8, 4), (2, 2))


def test_cp_recovers_planted_rank() -> None:
    k = planted_cp((10, 8, 3, 3), 5, seed=4)
    result = cp_als(k, 5, n_iter_max=500, tol=1e-14, compression=None, seed=0)
    assert result.relative_error < 1e-6
    torch.testing.assert_close(result.to_tensor(), k, atol=1e-5, rtol=1e-5)


def test_cp_with_compression_recovers_planted_rank() -> None:
    k = planted_cp((40, 36, 3, 3), 6, seed=5)
    result = cp_als(k, 6, n_iter_max=500, tol=1e-14, seed=0)
    assert result.relative_error < 1e-6


def test_cp_error_never_rises_and_is_reported_exactly() -> None:
    k = torch.randn(32, 24, 3, 3, generator=_gen(6), dtype=torch.float64)
    for compression in (None, 1.5):
        result = cp_als(k, 10, n_iter_max=40, tol=0.0, compression=compression)
        errors = result.errors
        assert all(b <= a + 1e-10 for a, b in itertools.pairwise(errors)), errors
        assert result.relative_error == pytest.approx(errors[-1], abs=1e-8)


def test_cp_is_deterministic_for_a_seed() -> None:
    k = torch.randn(16, 12, 3, 3, generator=_gen(7))
    first = cp_als(k, 40, seed=3, n_iter_max=20)
    again = cp_als(k, 40, seed=3, n_iter_max=20)
    other = cp_als(k, 40, seed=4, n_iter_max=20)
    for a, b in zip(first.factors, again.factors):
        assert torch.equal(a, b)
    assert not torch.equal(first.factors[2], other.factors[2])


def test_cp_keeps_dtype_and_validates() -> None:
    k = torch.randn(6, 5, 3, 3)
    result = cp_als(k, 4)
    assert all(f.dtype == torch.float32 for f in result.factors)
    assert result.num_params == 4 * (6 + 5 + 3 + 3)
    with pytest.raises(RankError, match="CP rank"):
        cp_als(k, 0)
    with pytest.raises(ValueError, match="init"):
        cp_als(k, 2, init="nope")
