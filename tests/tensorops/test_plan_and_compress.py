"""Plans round-trip through JSON; compress replaces exactly the planned layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tensorops import (
    Choice,
    NotCompressibleError,
    Plan,
    PlanError,
    RankError,
    compress,
    estimate_cost,
    inventory,
    measure_cost,
)
from tensorops.layers import CPConv2d, LowRankLinear, Tucker2Conv2d


def small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=4),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    )


PLAN = Plan(
    {
        "0": Choice("cp", (8,)),
        "3": Choice("tucker2", (12, 8)),
        "5": Choice("keep"),
        "7": Choice("svd", (6,)),
    }
)


def test_plan_round_trips_through_json() -> None:
    text = PLAN.to_json()
    assert Plan.from_json(text) == PLAN
    assert Plan.from_dict(PLAN.to_dict()) == PLAN
    assert PLAN["3"].ranks == (12, 8)
    assert set(PLAN.decomposed()) == {"0", "3", "7"}


@pytest.mark.parametrize(
    "data, match",
    [
        ("not json", "JSON"),
        ("[1, 2]", "object"),
        ('{"a": {"ranks": [1]}}', "method"),
        ('{"a": {"method": "svd", "ranks": [1.5]}}', "integers"),
        ('{"a": {"method": "keep", "ranks": [3]}}', "no ranks"),
        ('{"a": {"method": "svd", "ranks": [2], "extra": 1}}', "unknown field"),
    ],
)
def test_bad_plans_are_refused(data: str, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        Plan.from_json(data)


def test_inventory_lists_layers_with_costs_and_reasons() -> None:
    x = torch.randn(1, 3, 16, 16)
    layers = inventory(small_net(), x)
    assert [info.name for info in layers] == ["0", "3", "5", "7"]
    grouped = layers[2]
    assert not grouped.compressible and "grouped" in (grouped.reason or "")
    assert layers[1].input_size == (16, 16) and layers[1].output_size == (8, 8)
    assert layers[0].macs == 16 * 16 * 16 * 3 * 9
    assert layers[3].kind == "linear" and layers[3].params == 32 * 64 * 10 + 10


def test_unreached_layers_are_reported() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    layers = inventory(Net(), torch.randn(1, 4))
    assert layers[-1].name == "unused" and not layers[-1].compressible
    assert "not reached" in (layers[-1].reason or "")


def test_compress_replaces_planned_layers_and_leaves_input_untouched() -> None:
    model = small_net().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = compress(model, PLAN)
    assert isinstance(small[0], CPConv2d)
    assert isinstance(small[3], Tucker2Conv2d)
    assert isinstance(small[5], nn.Conv2d)
    assert isinstance(small[7], LowRankLinear)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert isinstance(model[3], nn.Conv2d)
    x = torch.randn(2, 3, 16, 16)
    assert small(x).shape == model(x).shape


def test_estimate_cost_matches_measurement() -> None:
    model = small_net().eval()
    x = torch.randn(1, 3, 16, 16)
    layers = inventory(model, x)
    estimated = estimate_cost(layers, PLAN, total=measure_cost(model, x))
    assert estimated == measure_cost(compress(model, PLAN), x)
    assert estimated.params < measure_cost(model, x).params


@pytest.mark.parametrize(
    "plan, error, match",
    [
        (Plan({"99": Choice("svd", (2,))}), PlanError, "'99'"),
        (Plan({"0": Choice("magic", (2,))}), PlanError, "magic"),
        (Plan({"3": Choice("tucker2", (33, 8))}), RankError, "'3'"),
        (Plan({"5": Choice("tucker2", (4, 4))}), NotCompressibleError, "grouped"),
        (Plan({"7": Choice("cp", (2,))}), NotCompressibleError, "'7'"),
    ],
)
def test_compress_names_the_bad_entry(plan: Plan, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        compress(small_net(), plan)


def test_cache_is_hit_on_repeated_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorops.methods._builtin as builtin

    calls = {"n": 0}
    real = builtin.mode_bases

    def counting(kernel: torch.Tensor) -> object:
        calls["n"] += 1
        return real(kernel)

    monkeypatch.setattr(builtin, "mode_bases", counting)
    model = small_net().eval()
    cache: dict[tuple[object, ...], object] = {}
    first = compress(model, Plan({"3": Choice("tucker2", (12, 8))}), cache=cache)
    compress(model, Plan({"3": Choice("tucker2", (6, 4))}), cache=cache)
    again = compress(model, Plan({"3": Choice("tucker2", (12, 8))}), cache=cache)
    assert calls["n"] == 1  # one basis per mode pair, shared across rank pairs
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
