"""The latency objective: interleaved speed-up measurement, the timing batch, and a slower
factorised model scoring below 1 so that the search has a reason to avoid it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tensorops as to
from worker.data import DataBundle
from worker.search import SearchConfig, measure_speedup, prepare
from worker.search._context import batch_of

CPU = torch.device("cpu")


class Repeated(nn.Module):
    """Runs ``layer`` ``times`` times: exactly ``times`` x the work of one pass."""

    def __init__(self, layer: nn.Module, times: int) -> None:
        super().__init__()
        self.layer = layer
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for _ in range(self.times):
            out = self.layer(x)
        return out


class ShapeSpy(nn.Module):
    """A small classifier that records the batch sizes it is called with."""

    def __init__(self, features: int = 64) -> None:
        super().__init__()
        self.body = nn.Linear(features, features)
        self.head = nn.Linear(features, 3)
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(x.shape[0]))
        return self.head(torch.relu(self.body(torch.flatten(x, 1))))


def bundle(n_val: int, features: int = 64) -> DataBundle:
    gen = torch.Generator().manual_seed(0)
    return DataBundle(
        name="random",
        x_train=torch.randn(32, 1, 8, features // 8, generator=gen),
        y_train=torch.randint(0, 3, (32,), generator=gen),
        x_val=torch.randn(n_val, 1, 8, features // 8, generator=gen),
        y_val=torch.randint(0, 3, (n_val,), generator=gen),
        num_classes=3,
    )


def config(**overrides: object) -> SearchConfig:
    settings: dict[str, object] = {
        "objective": "latency",
        "device": "cpu",
        "distill_weight": 0.0,
        "trials": 1,
    }
    settings.update(overrides)
    return SearchConfig(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides", [{"latency_batch_size": 0}, {"latency_repeats": 0}, {"latency_repeats": -3}]
)
def test_config_refuses_bad_latency_settings(overrides: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="latency_batch_size and latency_repeats"):
        config(**overrides)


def test_config_latency_defaults_serialise() -> None:
    data = SearchConfig().to_dict()
    assert data["latency_batch_size"] == 1
    assert data["latency_repeats"] == 30


def test_speedup_of_a_model_over_itself_is_about_one() -> None:
    layer = nn.Linear(512, 512)
    x = torch.randn(8, 512)
    ratio = measure_speedup(layer, copy.deepcopy(layer), x, device=CPU, repeats=40)
    assert 0.7 < ratio < 1.4


def test_speedup_sees_eight_times_the_work() -> None:
    """Eight passes instead of one: measured well below 1 (the true value is about 1/8)."""
    layer = nn.Linear(512, 512)
    x = torch.randn(8, 512)
    slow = Repeated(copy.deepcopy(layer), 8)
    assert measure_speedup(layer, slow, x, device=CPU, repeats=20) < 0.4
    assert measure_speedup(slow, layer, x, device=CPU, repeats=20) > 2.5


def test_speedup_refuses_no_repeats() -> None:
    layer = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="repeats"):
        measure_speedup(layer, layer, torch.randn(1, 4), device=CPU, repeats=0)


def test_batch_of_repeats_a_small_split_to_the_exact_batch() -> None:
    data = bundle(n_val=5)
    x = batch_of(data, 12)
    assert x.shape == (12, *data.x_val.shape[1:])
    assert torch.equal(x[:5], data.x_val)
    assert torch.equal(x[5:10], data.x_val)
    assert torch.equal(batch_of(data, 3), data.x_val[:3])


def test_latency_is_measured_at_the_configured_batch() -> None:
    torch.manual_seed(0)
    model = ShapeSpy()
    ctx = prepare(model, bundle(n_val=10), config(latency_batch_size=16, latency_repeats=5))
    assert ctx.latency_example is not None and ctx.latency_example.shape[0] == 16
    assert ctx.baseline_latency is not None and ctx.baseline_latency > 0
    assert 16 in ctx.model.batches  # type: ignore[operator]
    spy = ShapeSpy()
    ctx.latency(spy)
    assert spy.batches and set(spy.batches) == {16}


def test_plain_latency_without_a_baseline() -> None:
    """Objectives other than latency measure nothing at prepare; latency() is then a median."""
    model = ShapeSpy()
    ctx = prepare(model, bundle(n_val=10), config(objective="params", latency_repeats=4))
    assert ctx.baseline_latency is None
    spy = ShapeSpy()
    assert ctx.latency(spy) > 0
    assert len(spy.batches) == 3 + 4  # warm-up and repeats, the original not run


def test_a_slower_factorisation_scores_below_one_and_a_copy_about_one() -> None:
    """SVD of a Linear at full rank does twice the arithmetic: the objective's ratio must
    say it is slower than dense (< 1), and the original's copy must score about 1."""
    torch.manual_seed(0)
    model = ShapeSpy(features=256)
    data = bundle(n_val=40, features=256)
    ctx = prepare(model, data, config(latency_batch_size=32, latency_repeats=30))
    plan = to.Plan({"body": to.Choice("svd", (256,))})
    slower = to.compress(ctx.model, plan)
    slow_ratio = ctx.compression(plan, ctx.latency(slower))
    same_ratio = ctx.compression(to.Plan(), ctx.latency(copy.deepcopy(ctx.model)))
    assert slow_ratio < 0.9
    assert 0.7 < same_ratio < 1.4
    assert slow_ratio < same_ratio
