"""TT convolution and TT-Tucker: exact at full rank for every geometry, costed, checkpointed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tensorops import (
    BuildContext,
    Choice,
    NotCompressibleError,
    Plan,
    compress,
    get_method,
    inventory,
    load_compressed,
    measure_cost,
    save_compressed,
)
from tensorops.decompositions import relative_error
from tensorops.layers import TTConv2d, TTTuckerConv2d
from tensorops.layers._tt_conv import tt_conv_modes

GEOMETRIES: list[dict[str, Any]] = [
    {},
    {"stride": 2, "padding": 1},
    {"dilation": (1, 2), "padding": (1, 2), "stride": (1, 3)},
    {"padding": "same", "dilation": 2},
    {"padding": "valid"},
    {"padding": 1, "padding_mode": "reflect"},
    {"padding": 1, "padding_mode": "replicate"},
    {"padding": (1, 2), "padding_mode": "circular", "bias": False},
]


def _conv(in_ch: int = 6, out_ch: int = 8, kernel: Any = 3, **kwargs: Any) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        conv.weight.normal_()
        if conv.bias is not None:
            conv.bias.normal_()
    return conv


def _x(in_ch: int = 6) -> torch.Tensor:
    return torch.randn(2, in_ch, 11, 13, dtype=torch.float64)


def test_modes_follow_the_documented_rule() -> None:
    assert tt_conv_modes(64, 128) == ((4, 4, 4), (8, 4, 4))
    assert tt_conv_modes(8, 6) == ((4, 2), (3, 2))
    assert tt_conv_modes(96, 48) == ((6, 4, 4), (4, 4, 3))
    with pytest.raises(NotCompressibleError, match="in_channels=3 is prime"):
        tt_conv_modes(64, 3)
    method = get_method("tt_conv")
    assert "prime" in str(method.refusal(nn.Conv2d(3, 16, 3)))
    assert "1x1" in str(method.refusal(nn.Conv2d(6, 8, 1)))
    assert method.refusal(nn.Conv2d(6, 8, 3)) is None


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_full_tt_rank_reproduces_the_dense_conv(geometry: dict[str, Any]) -> None:
    conv = _conv(**geometry)
    layer = TTConv2d.from_conv(conv, get_method("tt_conv").max_ranks(conv)[0])
    x = _x()
    torch.testing.assert_close(layer.kernel(), conv.weight.detach())
    torch.testing.assert_close(layer(x), conv(x))


def test_three_mode_tt_conv_is_exact_and_truncation_errors_shrink_with_rank() -> None:
    conv = _conv(16, 8, 3, padding=1)  # out (2, 2, 2), in (4, 2, 2)
    assert len(TTConv2d.skeleton(conv, 1).cores) == 3
    full = get_method("tt_conv").max_ranks(conv)[0]
    x = _x(16)
    torch.testing.assert_close(TTConv2d.from_conv(conv, full)(x), conv(x))
    errors = [relative_error(conv.weight, TTConv2d.from_conv(conv, r).kernel()) for r in (2, 8, 32)]
    assert errors[0] > errors[1] > errors[2]


def test_planted_low_tt_rank_is_recovered() -> None:
    conv = _conv(16, 8, 3, padding=1)
    planted = TTConv2d.from_conv(conv, 3)  # an exact rank-3 train as the new kernel
    with torch.no_grad():
        conv.weight.copy_(planted.kernel())
    again = TTConv2d.from_conv(conv, 3)
    assert relative_error(conv.weight, again.kernel()) < 1e-10


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_full_rank_tt_tucker_reproduces_the_dense_conv(geometry: dict[str, Any]) -> None:
    conv = _conv(kernel=(3, 5), **geometry)
    layer = TTTuckerConv2d.from_conv(conv, get_method("tt_tucker").max_ranks(conv))  # type: ignore[arg-type]
    x = _x()
    torch.testing.assert_close(layer(x), conv(x))


def test_tt_tucker_with_a_low_middle_bond_is_a_separable_core() -> None:
    conv = _conv(6, 8, 3, padding=1)
    # Plant a kernel of rank 2 across (in, kh) | (kw, out), the split the middle bond makes.
    g = torch.Generator().manual_seed(0)
    upper = torch.randn(6, 3, 2, generator=g, dtype=torch.float64)  # (in, kh, t)
    lower = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)  # (t, kw, out)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("iht,two->oihw", upper, lower))
    layer = TTTuckerConv2d.from_conv(conv, (8, 6, 2))
    assert layer.bonds == (6, 2, 6)  # b_3 = min(r_out, t·kw)
    x = _x()
    torch.testing.assert_close(layer(x), conv(x))


@pytest.mark.parametrize("name", ["tt_conv", "tt_tucker", "btd"])
@pytest.mark.parametrize("geometry", [{"stride": 2, "padding": 1}, {"padding": "same"}], ids=str)
def test_cost_formula_equals_measured_cost(name: str, geometry: dict[str, Any]) -> None:
    method = get_method(name)
    conv = nn.Conv2d(16, 12, (3, 5), **geometry)
    x = torch.randn(1, 16, 15, 14)
    (info,) = inventory(conv, x)
    limits = method.max_ranks(conv)
    for ranks in (tuple(1 for _ in limits), tuple(max(1, m // 3) for m in limits), limits):
        layer = method.decompose(conv, ranks, BuildContext())
        assert method.cost(info, ranks) == measure_cost(layer, x), ranks


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(12, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv3(torch.relu(self.conv2(x))))
        return self.fc(x.flatten(1))


def _build(spec: Any) -> nn.Module:
    assert spec["arch"] == "test:net"
    return _Net()


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _Net().eval()
    plan = Plan(
        {
            "conv2": Choice("tt_conv", (3,)),
            "conv3": Choice("btd", (2, 3, 4)),
            "conv1": Choice("tt_tucker", (4, 1, 2)),
        }
    )
    small = compress(model, plan, seed=3)
    path = save_compressed(small, plan, tmp_path / "ckpt", meta={"arch": {"arch": "test:net"}})
    loaded = load_compressed(path, builder=_build)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), small(x))
    assert isinstance(loaded.get_submodule("conv2"), TTConv2d)


def test_seed_ranks_are_evbmf_estimates_within_limits() -> None:
    conv = nn.Conv2d(16, 12, 3)
    for name in ("tt_conv", "tt_tucker"):
        method = get_method(name)
        seeds = method.seed_ranks(conv)
        assert all(0 <= s <= m for s, m in zip(seeds, method.max_ranks(conv)))
        assert method.in_default_search is False
    # A planted rank-3 train: EVBMF finds no bond above 3 (plus a little noise).
    planted = TTConv2d.from_conv(_conv(16, 8, 3), 3)
    noisy = nn.Conv2d(16, 8, 3, dtype=torch.float64)
    with torch.no_grad():
        noisy.weight.copy_(planted.kernel() + 1e-4 * torch.randn(8, 16, 3, 3, dtype=torch.float64))
    assert get_method("tt_conv").seed_ranks(noisy) == (3,)
