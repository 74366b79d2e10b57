"""Conv1d compression (SVD, Tucker-2) and (N, F) / (N, C, L) inputs in the inventory."""

from __future__ import annotations

from collections.abc import Mapping
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
    applicable_methods,
    compress,
    get_method,
    inventory,
    load_compressed,
    measure_cost,
    save_compressed,
)
from tensorops.layers import LowRankConv1d, Tucker2Conv1d

GEOMETRIES: list[dict[str, Any]] = [
    {"kernel_size": 3, "padding": 1},
    {"kernel_size": 5, "stride": 2, "dilation": 2, "bias": False},
    {"kernel_size": 4, "padding": "same", "padding_mode": "reflect"},
    {"kernel_size": 3, "padding": 2, "padding_mode": "circular", "stride": 3},
]


def _conv(in_ch: int = 6, out_ch: int = 8, **geometry: Any) -> nn.Conv1d:
    torch.manual_seed(0)
    return nn.Conv1d(in_ch, out_ch, dtype=torch.float64, **geometry)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_full_rank_svd_conv1d_is_exact(geometry: dict[str, Any]) -> None:
    conv = _conv(**geometry)
    x = torch.randn(2, 6, 17, dtype=torch.float64)
    layer = LowRankConv1d.from_conv(conv, min(8, 6 * conv.kernel_size[0]))
    torch.testing.assert_close(layer(x), conv(x))


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_full_rank_tucker2_conv1d_is_exact(geometry: dict[str, Any]) -> None:
    conv = _conv(**geometry)
    x = torch.randn(2, 6, 17, dtype=torch.float64)
    layer = Tucker2Conv1d.from_conv(conv, (8, 6))
    torch.testing.assert_close(layer(x), conv(x))
    assert layer.core.stride == conv.stride and layer.core.dilation == conv.dilation
    assert layer.core.padding == conv.padding and layer.core.padding_mode == conv.padding_mode


def test_planted_svd_rank_is_recovered() -> None:
    torch.manual_seed(1)
    conv = nn.Conv1d(6, 10, 3, padding=1, dtype=torch.float64)
    left, right = torch.randn(10, 2, dtype=torch.float64), torch.randn(2, 18, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_((left @ right).reshape(10, 6, 3))
    method = get_method("svd")
    assert method.seed_ranks(conv) == (2,)
    layer = method.decompose(conv, (2,), BuildContext())
    x = torch.randn(3, 6, 11, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))


def test_planted_tucker2_ranks_are_recovered() -> None:
    torch.manual_seed(2)
    conv = nn.Conv1d(12, 16, 3, padding=1, bias=False, dtype=torch.float64)
    core = torch.randn(3, 2, 3, dtype=torch.float64)
    u_out = torch.linalg.qr(torch.randn(16, 3, dtype=torch.float64))[0]
    u_in = torch.linalg.qr(torch.randn(12, 2, dtype=torch.float64))[0]
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("abk,oa,ib->oik", core, u_out, u_in))
    method = get_method("tucker2")
    assert method.seed_ranks(conv) == (3, 2)
    layer = method.decompose(conv, (3, 2), BuildContext())
    x = torch.randn(3, 12, 9, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))
    assert measure_cost(layer, x).params < sum(p.numel() for p in conv.parameters())


def test_conv1d_methods_and_refusals() -> None:
    assert applicable_methods(nn.Conv1d(4, 8, 3)) == ["svd", "tucker2"]
    assert applicable_methods(nn.Conv1d(4, 8, 1)) == ["svd"]
    assert "kernel longer than 1" in (get_method("tucker2").refusal(nn.Conv1d(4, 8, 1)) or "")
    depthwise = nn.Conv1d(4, 4, 3, groups=4)
    assert applicable_methods(depthwise) == []
    assert "depthwise" in (get_method("svd").refusal(depthwise) or "")
    with pytest.raises(NotCompressibleError, match="depthwise"):
        Tucker2Conv1d.skeleton(depthwise, (2, 2))


class SeqNet(nn.Module):
    """(N, 3, 10) sequences through two Conv1d and a head; or (N, F) features through an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv1d(16, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.flatten(1))


def test_inventory_of_sequences_and_features() -> None:
    layers = inventory(SeqNet(), torch.randn(1, 3, 10))
    assert [(i.name, i.kind) for i in layers] == [
        ("conv1", "conv1d"),
        ("conv2", "conv1d"),
        ("fc", "linear"),
    ]
    conv2 = layers[1]
    assert conv2.kernel_size == (3, 1) and conv2.stride == (2, 1) and conv2.padding == (1, 0)
    assert conv2.input_size == (10, 1) and conv2.output_size == (5, 1)
    assert conv2.macs == 5 * 16 * 16 * 3 and conv2.compressible
    mlp = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2))
    first, last = inventory(mlp, torch.randn(1, 30))
    assert (first.kind, first.input_size, first.macs) == ("linear", (1, 1), 30 * 16)
    assert last.macs == 16 * 2
    assert measure_cost(mlp, torch.randn(4, 30)).macs == 30 * 16 + 16 * 2


def test_conv1d_plan_compresses_and_checkpoints_round_trip(tmp_path: Path) -> None:
    model = SeqNet().eval()
    x = torch.randn(4, 3, 10)
    plan = Plan(
        {
            "conv1": Choice("svd", (4,)),
            "conv2": Choice("tucker2", (6, 5)),
            "fc": Choice("svd", (2,)),
        }
    )
    small = compress(model, plan)
    assert isinstance(small.conv1, LowRankConv1d) and isinstance(small.conv2, Tucker2Conv1d)
    infos = {i.name: i for i in inventory(model, x[:1])}
    closed_form = [get_method(c.method).cost(infos[n], c.ranks) for n, c in plan.items()]
    # Every layer is planned and nothing else holds parameters or MACs.
    assert sum(closed_form[1:], closed_form[0]) == measure_cost(small, x[:1])
    with torch.no_grad():
        out = small(x)

    def build(spec: Mapping[str, Any]) -> nn.Module:
        assert spec["arch"] == "test:seqnet"
        return SeqNet()

    path = save_compressed(small, plan, tmp_path / "ckpt", meta={"arch": {"arch": "test:seqnet"}})
    loaded = load_compressed(path, builder=build)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out)
