"""TT, QTT and QCP linear layers: exactness at full rank, equivalence with their dense weight,
measured cost, checkpoints."""

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
    compress,
    export_torchscript,
    get_method,
    inventory,
    load_compressed,
    measure_cost,
    save_compressed,
)
from tensorops.layers import QCPLinear, QTTLinear, TTLinear, factorize_modes
from tensorops.layers._tt_linear import resolve_modes, tt_matrix_macs


def _dense(in_features: int, out_features: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features).double()


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_automatic_modes_are_balanced_and_deterministic() -> None:
    assert factorize_modes(784, 3) == (14, 8, 7)
    assert factorize_modes(300, 3) == (10, 6, 5)
    assert factorize_modes(7, 3) == (7, 1, 1)
    assert resolve_modes(300, 784, None, None) == ((10, 6, 5), (14, 8, 7))
    assert resolve_modes(12, 20, None, (5, 4)) == ((4, 3), (5, 4))
    with pytest.raises(NotCompressibleError, match="prime"):
        resolve_modes(7, 5, None, None)
    with pytest.raises(ValueError, match="multiply"):
        resolve_modes(12, 20, (3, 3), (5, 4))


@pytest.mark.parametrize(
    "in_f, out_f, in_modes, out_modes",
    [(20, 7, None, None), (24, 30, (4, 3, 2), (5, 3, 2)), (64, 128, None, None)],
)
def test_tt_linear_full_rank_reproduces_the_dense_layer(
    in_f: int, out_f: int, in_modes: tuple[int, ...] | None, out_modes: tuple[int, ...] | None
) -> None:
    dense = _dense(in_f, out_f)
    layer = TTLinear.from_linear(dense, in_modes=in_modes, out_modes=out_modes)
    x = _x(2, 3, in_f)  # leading dims are kept
    torch.testing.assert_close(layer(x), dense(x), atol=1e-10, rtol=1e-10)
    assert layer.bias is not None and torch.equal(layer.bias, dense.bias)


def test_truncated_tt_linear_equals_a_dense_layer_holding_its_weight() -> None:
    dense = _dense(64, 128)
    layer = TTLinear.from_linear(dense, ranks=3)
    assert layer.ranks == (1, 3, 3, 1)
    twin = _dense(64, 128)
    with torch.no_grad():
        twin.weight.copy_(layer.weight_matrix())
    x = _x(5, 64)
    torch.testing.assert_close(layer(x), twin(x), atol=1e-10, rtol=1e-10)
    # A capped TT has fewer parameters and MACs than the dense layer.
    cost = measure_cost(layer, x)
    assert cost.params < 64 * 128 + 128 and cost.macs < 64 * 128


@pytest.mark.parametrize("in_f, out_f", [(20, 7), (12, 33), (16, 16)])
def test_qtt_linear_full_rank_reproduces_the_dense_layer_through_padding(
    in_f: int, out_f: int
) -> None:
    dense = _dense(in_f, out_f)
    layer = QTTLinear.from_linear(dense)
    assert set(layer.out_modes) <= {1, 2} and set(layer.in_modes) <= {1, 2}
    x = _x(4, in_f)
    torch.testing.assert_close(layer(x), dense(x), atol=1e-10, rtol=1e-10)


def test_qtt_refuses_a_single_digit_layer() -> None:
    with pytest.raises(NotCompressibleError, match="single"):
        QTTLinear.from_linear(_dense(2, 2))


def test_qcp_recovers_a_kronecker_weight_at_rank_one() -> None:
    # kron(A1, A2, A3) of 2x2 matrices is a rank-1 CP tensor once quantised with base 2.
    g = torch.Generator().manual_seed(2)
    a1, a2, a3 = (torch.randn(2, 2, generator=g, dtype=torch.float64) for _ in range(3))
    dense = _dense(8, 8)
    with torch.no_grad():
        dense.weight.copy_(torch.kron(a1, torch.kron(a2, a3)))
    layer = QCPLinear.from_linear(dense, 1, n_iter_max=100)
    torch.testing.assert_close(layer.weight_matrix(), dense.weight, atol=1e-8, rtol=1e-8)
    x = _x(3, 8)
    torch.testing.assert_close(layer(x), dense(x), atol=1e-8, rtol=1e-8)


def test_qcp_forward_equals_a_dense_layer_holding_its_weight() -> None:
    dense = _dense(20, 7)
    layer = QCPLinear.from_linear(dense, 5, seed=3)
    twin = _dense(20, 7)
    with torch.no_grad():
        twin.weight.copy_(layer.weight_matrix())
    x = _x(6, 20)
    torch.testing.assert_close(layer(x), twin(x), atol=1e-10, rtol=1e-10)
    again = QCPLinear.from_linear(dense, 5, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(layer.parameters(), again.parameters()))


@pytest.mark.parametrize("method_name", ["tt", "qtt", "qcp", "ntt"])
@pytest.mark.parametrize("in_f, out_f, positions", [(24, 30, 1), (20, 7, 5), (100, 36, 3)])
def test_closed_form_cost_equals_measured_cost_with_positions(
    method_name: str, in_f: int, out_f: int, positions: int
) -> None:
    method = get_method(method_name)
    dense = nn.Linear(in_f, out_f)
    x = torch.randn(2, positions, in_f)
    (info,) = inventory(dense, x)
    # The QCP rank changes no structure, only widths: its (slow) maximal rank adds nothing here.
    top = method.max_ranks(dense)[0] if method_name != "qcp" else 3
    for rank in sorted({1, 3, top}):
        built = method.decompose(dense, (rank,), BuildContext(seed=0))
        assert method.cost(info, (rank,)) == measure_cost(built, x), (method_name, rank)
        assert built(x).shape == dense(x).shape


def test_measure_cost_does_not_see_a_full_weight_matmul() -> None:
    # The forward contracts core by core: at rank 1 its MACs are far below the dense layer's.
    layer = TTLinear.from_linear(_dense(64, 128), ranks=1)
    assert measure_cost(layer, _x(1, 64)).macs == tt_matrix_macs(
        layer.out_modes, layer.in_modes, layer.ranks
    )
    assert layer.macs_per_vector() < 64 * 128 // 4


@pytest.mark.parametrize("method_name", ["tt", "qtt", "qcp", "ntt"])
def test_methods_are_opt_in_and_seed_in_range(method_name: str) -> None:
    method = get_method(method_name)
    assert method.in_default_search is False
    assert method.refusal(nn.Conv2d(4, 4, 1)) is not None
    # A planted low-TT-rank weight plus noise: EVBMF finds a small, non-zero rank.
    dense = _dense(64, 128)
    planted = TTLinear.from_linear(_dense(64, 128, seed=5), ranks=2).weight_matrix()
    with torch.no_grad():
        dense.weight.copy_(planted + 1e-3 * torch.randn(128, 64, dtype=torch.float64))
    (seed,) = method.seed_ranks(dense)
    assert 1 <= seed <= method.max_ranks(dense)[0]
    if method_name in ("tt", "ntt"):
        assert seed == 2


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 24)
        self.fc2 = nn.Linear(24, 30)
        self.fc3 = nn.Linear(30, 12)
        self.fc4 = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc4(torch.relu(self.fc3(x)))


def _build(spec: Mapping[str, Any]) -> nn.Module:
    assert spec["arch"] == "test:mlp"
    return _MLP()


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    plan = Plan(
        {
            "fc1": Choice("tt", (3,)),
            "fc2": Choice("qtt", (4,)),
            "fc3": Choice("qcp", (3,)),
            "fc4": Choice("ntt", (2,)),
        }
    )
    small = compress(_MLP().eval(), plan)
    assert isinstance(small.fc2, QTTLinear) and isinstance(small.fc3, QCPLinear)
    path = save_compressed(small, plan, tmp_path / "ckpt", meta={"arch": {"arch": "test:mlp"}})
    loaded = load_compressed(path, builder=_build)
    x = torch.randn(4, 20)
    assert torch.equal(loaded(x), small(x))


def test_torchscript_export_generalises_over_batch(tmp_path: Path) -> None:
    plan = Plan(
        {
            "fc1": Choice("tt", (3,)),
            "fc2": Choice("qtt", (4,)),
            "fc3": Choice("qcp", (3,)),
            "fc4": Choice("ntt", (2,)),
        }
    )
    small = compress(_MLP().eval(), plan)
    path = export_torchscript(small, torch.randn(2, 20), tmp_path / "model.pt")
    loaded = torch.jit.load(str(path))
    x = torch.randn(5, 20)  # traced at batch 2: sizes must not be frozen or mutated
    torch.testing.assert_close(loaded(x), small(x))
