"""Block-term decomposition: exact at full rank, planted blocks recovered, seeded, costed."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch import nn

from tensorops import BuildContext, RankError, get_method, inventory, measure_cost
from tensorops.decompositions import btd, btd_to_tensor, validate_btd_ranks
from tensorops.layers import BTDConv2d

GEOMETRIES: list[dict[str, Any]] = [
    {},
    {"stride": 2, "padding": 1},
    {"dilation": (1, 2), "padding": (1, 2), "stride": (1, 3)},
    {"padding": "same", "dilation": 2},
    {"padding": 1, "padding_mode": "reflect"},
    {"padding": (1, 2), "padding_mode": "circular", "bias": False},
]


def _planted(seed: int, blocks: int, r_out: int, r_in: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cores = torch.randn(blocks, r_out, r_in, 3, 3, generator=g, dtype=torch.float64)
    u = torch.randn(blocks, 16, r_out, generator=g, dtype=torch.float64)
    v = torch.randn(blocks, 12, r_in, generator=g, dtype=torch.float64)
    return btd_to_tensor(cores, u, v)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_one_full_rank_block_reproduces_the_dense_conv(geometry: dict[str, Any]) -> None:
    conv = nn.Conv2d(5, 7, 3, dtype=torch.float64, **geometry)
    layer = BTDConv2d.from_conv(conv, (1, 7, 5))
    x = torch.randn(2, 5, 11, 13, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_blocks_are_recovered_at_the_planted_ranks(seed: int) -> None:
    kernel = _planted(seed, 3, 2, 2)
    result = btd(kernel, (3, 2, 2))
    assert result.relative_error < 1e-6
    torch.testing.assert_close(result.to_tensor(), kernel, atol=1e-6, rtol=1e-6)
    # A Tucker-2 of the same total widths and a single smaller block cannot do this.
    assert btd(kernel, (1, 2, 2)).relative_error > 0.3


def test_als_error_never_rises_and_beats_deflation() -> None:
    kernel = torch.randn(12, 10, 3, 3, dtype=torch.float64)
    result = btd(kernel, (3, 2, 3), n_starts=1)
    errors = result.errors
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(errors))
    assert errors[-1] < errors[0]
    assert result.relative_error == pytest.approx(errors[-1], abs=1e-10)


def test_same_seed_same_result_and_dtype_kept() -> None:
    kernel = torch.randn(10, 8, 3, 3)
    first, again = btd(kernel, (2, 3, 3), seed=4), btd(kernel, (2, 3, 3), seed=4)
    for a, b in (
        (first.cores, again.cores),
        (first.out_factors, again.out_factors),
        (first.in_factors, again.in_factors),
    ):
        assert torch.equal(a, b)
    assert first.cores.dtype == torch.float32
    assert first.ranks == (2, 3, 3)


def test_ranks_are_validated() -> None:
    with pytest.raises(RankError, match="blocks"):
        validate_btd_ranks((8, 6, 3, 3), (7, 2, 2))
    with pytest.raises(RankError, match="r_in"):
        validate_btd_ranks((8, 6, 3, 3), (2, 2, 7))
    with pytest.raises(RankError, match="three ranks"):
        validate_btd_ranks((8, 6, 3, 3), (2, 2))
    assert validate_btd_ranks((8, 6, 3, 3), (6, 8, 6)) == (6, 8, 6)


@pytest.mark.parametrize("ranks", [(1, 1, 1), (3, 4, 2), (4, 10, 6)])
def test_cost_formula_equals_measured_cost(ranks: tuple[int, int, int]) -> None:
    method = get_method("btd")
    conv = nn.Conv2d(6, 10, (3, 5), stride=(2, 1), padding=(1, 2))
    x = torch.randn(1, 6, 15, 14)
    (info,) = inventory(conv, x)
    layer = method.decompose(conv, ranks, BuildContext())
    assert method.cost(info, ranks) == measure_cost(layer, x)
    assert isinstance(layer, BTDConv2d) and layer.core.groups == ranks[0]


def test_seed_ranks_split_the_evbmf_tucker2_widths() -> None:
    method = get_method("btd")
    conv = nn.Conv2d(12, 16, 3)
    with torch.no_grad():
        conv.weight.copy_(_planted(0, 2, 3, 3).float() + 1e-3 * torch.randn(16, 12, 3, 3))
    # Two planted blocks of ranks (3, 3): EVBMF sees Tucker-2 widths (6, 6).
    assert method.seed_ranks(conv) == (2, 3, 3)
    assert method.in_default_search is False


def test_scaling_rounds_block_ranks_to_the_multiple_but_not_the_block_count() -> None:
    method = get_method("btd")
    conv = nn.Conv2d(32, 64, 3)
    assert method.scaled_ranks(conv, (2, 10, 5), 1.0, multiple=8) == (2, 8, 8)
    assert method.scaled_ranks(conv, (2, 10, 5), 2.0) == (4, 20, 10)
