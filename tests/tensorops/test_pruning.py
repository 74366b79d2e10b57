"""Norm-based structured pruning: the layers, the ``prune`` method and the cross-layer shrink."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tensorops import (
    BuildContext,
    Choice,
    NormConv2d,
    NormLinear,
    Penalized,
    Plan,
    PlanError,
    Tucker2Conv2d,
    compress,
    get_method,
    inventory,
    load_compressed,
    measure_cost,
    prune_channels,
    save_compressed,
)

# --------------------------------------------------------------------------- models


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 10)
        self.fc3 = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(nn.functional.gelu(self.fc1(x)))))


class ConvNet(nn.Module):
    """conv → bn → relu → pool → conv (unpadded) → relu → pool → flatten → linear."""

    def __init__(self, pad2: int = 0, bias2: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=pad2, bias=bias2)
        self.fc = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv1(x))), 2)  # (N, 8, 8, 8)
        x = torch.relu(self.conv2(x))  # (N, 6, 6, 6) unpadded
        x = nn.functional.adaptive_avg_pool2d(x, 3)  # (N, 6, 3, 3)
        return self.fc(torch.flatten(x, 1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        return self.conv2(y + x)


def _with_bn_stats(model: nn.Module, x: torch.Tensor) -> nn.Module:
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def _layer(model: nn.Module, name: str) -> NormLinear | NormConv2d:
    layer = model.get_submodule(name)
    assert isinstance(layer, (NormLinear, NormConv2d))
    return layer


def _zero_units(model: nn.Module, units: Mapping[str, list[int]]) -> None:
    """Mask the given unit positions of ``prune`` layers to zero norm."""
    with torch.no_grad():
        for name, positions in units.items():
            layer = model.get_submodule(name)
            assert isinstance(layer, (NormLinear, NormConv2d))
            layer.g[positions] = 0.0


# --------------------------------------------------------------------------- layers


@pytest.mark.parametrize(
    "dense, x",
    [
        (nn.Linear(20, 7), torch.randn(5, 20)),
        (nn.Linear(20, 7, bias=False), torch.randn(2, 3, 20)),
        (nn.Conv2d(6, 10, 3, stride=2, padding=1), torch.randn(2, 6, 11, 9)),
        (
            nn.Conv2d(6, 8, (5, 3), stride=(1, 2), dilation=(2, 1), bias=False),
            torch.randn(1, 6, 15, 14),
        ),
    ],
)
def test_full_ranks_reproduce_the_dense_layer(dense: nn.Module, x: torch.Tensor) -> None:
    method = get_method("prune")
    layer = method.decompose(dense, method.max_ranks(dense), BuildContext())
    assert isinstance(layer, (NormLinear, NormConv2d))
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-6)
    weight = dense.get_parameter("weight").detach()
    assert torch.allclose(layer.norms(), weight.reshape(weight.shape[0], -1).norm(dim=1))


def test_zero_weight_rows_give_no_nan() -> None:
    dense = nn.Linear(5, 4)
    with torch.no_grad():
        dense.weight[1] = 0.0
    layer = NormLinear.from_linear(dense)
    x = torch.randn(3, 5)
    out = layer(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, dense(x))


def test_penalty_is_the_l1_of_the_norms_and_has_a_gradient() -> None:
    layer = NormConv2d.from_conv(nn.Conv2d(3, 5, 3))
    assert isinstance(layer, Penalized)
    assert not isinstance(nn.Linear(2, 2), Penalized)
    penalty = layer.penalty()
    torch.testing.assert_close(penalty, layer.norms().sum())
    penalty.backward()
    assert layer.g.grad is not None and torch.all(layer.g.grad == 1.0)


def test_standalone_decompose_keeps_the_largest_units_and_scatters_biases() -> None:
    dense = nn.Linear(6, 4)
    with torch.no_grad():
        dense.weight.copy_(torch.arange(24.0).reshape(4, 6) - 12)  # row norms: 0 and 3 largest
        dense.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    layer = NormLinear.from_linear(dense, 2, 6)
    assert layer.out_index.tolist() == [0, 3]
    out = layer(torch.randn(2, 6))
    assert torch.equal(out[:, 1], torch.full((2,), 2.0))  # removed units give their bias
    assert torch.equal(out[:, 2], torch.full((2,), 3.0))


def test_mask_zeroes_units_under_the_threshold() -> None:
    layer = NormLinear.from_linear(nn.Linear(8, 6))
    threshold = float(layer.norms().median())
    count = layer.mask_(threshold)
    assert count == int((layer.norms() == 0).sum()) >= 3


# --------------------------------------------------------------------------- cross-layer shrink


def test_zero_norm_units_are_removed_exactly_across_linears() -> None:
    model = MLP().eval()
    plan = Plan({"fc1": Choice("prune", (16, 12)), "fc2": Choice("prune", (10, 16))})
    masked = compress(model, plan)
    _zero_units(masked, {"fc1": [0, 3, 7, 8], "fc2": [2]})
    x = torch.randn(9, 12)
    result = prune_channels(masked, plan, threshold=0.0)
    torch.testing.assert_close(result.model(x), masked(x), rtol=1e-5, atol=1e-6)
    assert result.plan["fc1"] == Choice("prune", (12, 12))
    assert result.plan["fc2"] == Choice("prune", (9, 12))  # 4 inputs gone with fc1's units
    assert result.plan["fc3"] == Choice("prune", (4, 9))  # the dense head lost an input too
    assert result.kept_width == {}
    before, after = measure_cost(masked, x[:1]), measure_cost(result.model, x[:1])
    assert after.params < before.params and after.macs < before.macs
    # The input model is untouched.
    assert isinstance(masked.fc3, nn.Linear) and _layer(masked, "fc1").kept_out == 16


def test_conv_bn_relu_pool_conv_and_flatten_linear_shrink() -> None:
    x = torch.randn(4, 3, 16, 16)
    model = _with_bn_stats(ConvNet(), x)
    plan = Plan({"conv1": Choice("prune", (8, 3)), "conv2": Choice("prune", (6, 8))})
    masked = compress(model, plan)
    with torch.no_grad():
        _layer(masked, "conv1").bias.fill_(0.3)  # type: ignore[union-attr]  # removed channels carry non-zero constants through bn+relu
    _zero_units(masked, {"conv1": [1, 5], "conv2": [0, 4]})
    result = prune_channels(masked, plan, threshold=0.0)
    assert result.kept_width == {}
    assert result.plan["conv1"].ranks == (6, 3)
    assert result.plan["conv2"].ranks == (4, 6)
    assert result.plan["fc"].ranks == (5, 4 * 9)  # each channel fed 3x3 features
    torch.testing.assert_close(result.model(x), masked(x), rtol=1e-5, atol=1e-5)
    # The closed-form cost of the new plan equals the measured cost of the pruned model.
    layers = inventory(model, x[:1])
    cost = measure_cost(result.model, x[:1])
    total = measure_cost(model, x[:1])
    from tensorops import estimate_cost

    assert estimate_cost(layers, result.plan, total=total) == cost
    assert cost.params < total.params


def test_threshold_removes_small_norms_and_keeps_at_least_one_unit() -> None:
    model = MLP().eval()
    plan = Plan({"fc1": Choice("prune", (16, 12))})
    masked = compress(model, plan)
    result = prune_channels(masked, plan, threshold=1e9)
    assert result.plan["fc1"].ranks == (1, 12)
    norms = _layer(masked, "fc1").norms()
    kept = _layer(result.model, "fc1").out_index.tolist()
    assert kept == [int(torch.argmax(norms))]


def test_only_the_named_layers_are_thresholded() -> None:
    model = MLP().eval()
    plan = Plan({"fc1": Choice("prune", (16, 12)), "fc2": Choice("prune", (10, 16))})
    masked = compress(model, plan)
    _zero_units(masked, {"fc1": [0], "fc2": [1]})
    result = prune_channels(masked, plan, threshold=0.0, layers=["fc2"])
    assert result.plan["fc1"].ranks == (16, 12)
    assert result.plan["fc2"].ranks == (9, 16)
    with pytest.raises(PlanError, match="fc3"):
        prune_channels(masked, plan, threshold=0.0, layers=["fc3"])


def test_padded_consumer_with_a_constant_keeps_its_width(caplog: pytest.LogCaptureFixture) -> None:
    x = torch.randn(2, 3, 16, 16)
    model = _with_bn_stats(ConvNet(pad2=1), x)
    model.fc = nn.Linear(6 * 3 * 3, 5)
    plan = Plan({"conv1": Choice("prune", (8, 3))})
    masked = compress(model, plan)
    with torch.no_grad():
        # relu(bn(bias)) > 0: a constant that the zero padding would cut at the borders
        masked.get_submodule("bn").get_parameter("bias").fill_(1.0)
    _zero_units(masked, {"conv1": [2]})
    with caplog.at_level(logging.INFO, logger="tensorops.pruning"):
        result = prune_channels(masked, plan, threshold=0.0)
    assert "zero-pads" in result.kept_width["conv1"]
    assert "keeping the next layer's full input width" in caplog.text
    assert result.plan["conv1"].ranks == (7, 3)
    assert "conv2" not in result.plan and isinstance(result.model.conv2, nn.Conv2d)
    torch.testing.assert_close(result.model(x), masked(x), rtol=1e-5, atol=1e-5)


def test_residual_pattern_keeps_width_and_stays_exact() -> None:
    model = Residual().eval()
    plan = Plan({"conv1": Choice("prune", (4, 4))})
    masked = compress(model, plan)
    _zero_units(masked, {"conv1": [1]})
    result = prune_channels(masked, plan, threshold=0.0)
    assert "combines" in result.kept_width["conv1"]
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(result.model(x), masked(x))
    assert isinstance(result.model.conv2, nn.Conv2d)


def test_output_used_twice_keeps_width() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(6, 3)
            self.c = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            return self.b(h) * self.c(h)

    model = Twice().eval()
    plan = Plan({"a": Choice("prune", (6, 4))})
    masked = compress(model, plan)
    _zero_units(masked, {"a": [0]})
    result = prune_channels(masked, plan, threshold=0.0)
    assert "used 2 times" in result.kept_width["a"]
    x = torch.randn(3, 4)
    torch.testing.assert_close(result.model(x), masked(x))


def test_consumer_called_twice_keeps_width() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(5, 5)
            self.shared = nn.Linear(5, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.shared(torch.relu(self.a(x))) + self.shared(x)

    model = Shared().eval()
    plan = Plan({"a": Choice("prune", (5, 5))})
    masked = compress(model, plan)
    _zero_units(masked, {"a": [2]})
    result = prune_channels(masked, plan, threshold=0.0)
    assert "called 2 times" in result.kept_width["a"]
    x = torch.randn(3, 5)
    torch.testing.assert_close(result.model(x), masked(x))


# --------------------------------------------------------------------------- plans and checkpoints


class LeNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1 = nn.Linear(8 * 3 * 3, 20)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)  # (N, 6, 4, 4)
        x = nn.functional.adaptive_max_pool2d(torch.relu(self.conv2(x)), 3)  # (N, 8, 3, 3)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def build(spec: Mapping[str, Any]) -> nn.Module:
    assert spec["arch"] == "test:lenetish"
    torch.manual_seed(123)  # weights are loaded over whatever this builds
    return LeNetish()


ARCH = {"arch": "test:lenetish", "kwargs": {}}


def _combined() -> tuple[nn.Module, nn.Module, Plan]:
    model = LeNetish().eval()
    plan = Plan(
        {
            "conv1": Choice("prune", (6, 1)),
            "conv2": Choice("tucker2", (4, 3)),
            "fc1": Choice("prune", (20, 72)),
        }
    )
    masked = compress(model, plan)
    _zero_units(masked, {"conv1": [3], "fc1": [0, 5, 6, 19]})
    return model, masked, plan


def test_prune_combines_with_tucker2_in_one_plan() -> None:
    _, masked, plan = _combined()
    result = prune_channels(masked, plan, threshold=0.0)
    assert isinstance(result.model.conv2, Tucker2Conv2d)
    assert result.plan["conv2"] == Choice("tucker2", (4, 3))
    # conv1 feeds a Tucker-2 layer: its units are removed, its consumer's inputs are kept.
    assert "Tucker2Conv2d" in result.kept_width["conv1"]
    assert result.plan["conv1"].ranks == (5, 1)
    assert result.plan["fc1"].ranks == (16, 72)
    assert result.plan["fc2"].ranks == (10, 16)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(result.model(x), masked(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["ckpt", "ckpt.safetensors"])
def test_checkpoint_round_trip_of_a_pruned_model(tmp_path: Path, name: str) -> None:
    _, masked, plan = _combined()
    result = prune_channels(masked, plan, threshold=0.0)
    path = save_compressed(result.model, result.plan, tmp_path / name, meta={"arch": ARCH})
    loaded = load_compressed(path, builder=build)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(loaded(x), result.model(x))
    assert _layer(loaded, "fc2").in_index.tolist() == _layer(result.model, "fc2").in_index.tolist()
    assert _layer(loaded, "fc1").effective_weight().shape == (16, 72)


def test_plan_and_model_must_agree() -> None:
    model = MLP().eval()
    plan = Plan({"fc1": Choice("prune", (16, 12))})
    with pytest.raises(PlanError, match="compress"):
        prune_channels(model, plan, threshold=0.0)
    masked = compress(model, plan)
    with pytest.raises(PlanError, match="does not name"):
        prune_channels(masked, Plan({}), threshold=0.0)
    with pytest.raises(ValueError, match="threshold"):
        prune_channels(masked, plan, threshold=-1.0)
