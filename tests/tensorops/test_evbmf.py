"""EVBMF rank estimation: planted ranks are recovered, noise gives zero."""

from __future__ import annotations

import pytest
import torch

from tensorops import clamp_rank, cp_rank_from_tucker2, evbmf, tucker2_ranks


def low_rank_plus_noise(
    rows: int, cols: int, rank: int, scale: float, seed: int = 0
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    signal = torch.randn(rows, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, cols, generator=g, dtype=torch.float64
    )
    return scale * signal + torch.randn(rows, cols, generator=g, dtype=torch.float64)


def test_planted_rank_40_is_recovered_wide_and_tall() -> None:
    m = low_rank_plus_noise(512, 4608, 40, scale=0.2)
    # Every planted component sits well above the noise edge (largest noise value ~ 90).
    assert float(torch.linalg.svdvals(0.2 * (m - m.mean()))[39]) > 0
    wide = evbmf(m)
    assert wide.rank == 40
    assert wide.noise_variance == pytest.approx(1.0, rel=0.05)
    assert evbmf(m.T).rank == 40
    assert wide.singular_values.shape == (40,)
    assert bool((wide.shrunk_values < wide.singular_values).all())


def test_pure_noise_and_zero_give_rank_zero() -> None:
    g = torch.Generator().manual_seed(1)
    assert evbmf(torch.randn(200, 300, generator=g, dtype=torch.float64)).rank == 0
    assert evbmf(torch.randn(300, 200, generator=g, dtype=torch.float64)).rank == 0
    assert evbmf(torch.zeros(10, 20)).rank == 0


def test_small_planted_rank_on_square_matrix() -> None:
    m = low_rank_plus_noise(100, 100, 5, scale=1.0, seed=2)
    assert evbmf(m).rank == 5


def test_known_noise_variance_is_used() -> None:
    m = low_rank_plus_noise(100, 150, 3, scale=1.0, seed=3)
    result = evbmf(m, noise_variance=1.0)
    assert result.noise_variance == 1.0
    assert result.rank == 3


def test_evbmf_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        evbmf(torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="NaN"):
        evbmf(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


def test_tucker2_ranks_from_unfoldings_and_cp_rank() -> None:
    g = torch.Generator().manual_seed(4)
    core = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64) * 30
    u_out = torch.randn(64, 6, generator=g, dtype=torch.float64)
    u_in = torch.randn(48, 4, generator=g, dtype=torch.float64)
    k = torch.einsum("abhw,oa,ib->oihw", core, u_out, u_in)
    k = k + torch.randn(k.shape, generator=g, dtype=torch.float64)
    assert tucker2_ranks(k) == (6, 4)
    cp = cp_rank_from_tucker2((64, 48, 3, 3), (6, 4))
    assert cp == round((48 * 4 + 4 * 6 * 9 + 6 * 64) / (64 + 48 + 3 + 3))


def test_untrained_kernel_gives_zero_and_clamp_floor() -> None:
    k = torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(5))
    assert tucker2_ranks(k) == (0, 0)
    assert clamp_rank(0, 16) == 1
    assert clamp_rank(0, 16, floor=4) == 4
    assert clamp_rank(40, 16) == 16
    assert clamp_rank(0, 2, floor=4) == 2


def test_dead_channels_do_not_change_the_estimate() -> None:
    """Exact zero singular values (pruned or dead channels) must not break the noise estimate."""
    m = low_rank_plus_noise(128, 1152, 12, scale=0.5, seed=6)
    dead = m.clone()
    dead[:4] = 0.0
    base, with_dead = evbmf(m), evbmf(dead)
    assert base.rank == 12
    assert with_dead.rank == 12
    assert with_dead.noise_variance == pytest.approx(base.noise_variance, rel=0.1)
