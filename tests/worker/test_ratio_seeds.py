"""Seeds that span the compression axis (worker/search/_ratio_seeds.py) and spending the
margin the chosen plan leaves (worker/search/_spend.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import optuna
import pytest
from torch import nn

from tensorops import KEEP
from worker.data import DataBundle
from worker.search import SearchConfig, SearchContext, prepare, seed_trials
from worker.search._ratio_seeds import ratio_seeds
from worker.search._seeds import seed_budget
from worker.search._space import plan_from_params, small_layers
from worker.search._spend import spend_margin


def make_config(**overrides: Any) -> SearchConfig:
    settings: dict[str, Any] = {
        "trials": 8,
        "epochs_per_trial": 1,
        "final_epochs": 1,
        "batch_size": 64,
        "device": "cpu",
        "max_accuracy_drop": 3.0,
        "seed_min_share": 0.0,
    }
    settings.update(overrides)
    return SearchConfig(**settings)


@pytest.fixture
def ctx(trained: nn.Module, data: DataBundle) -> SearchContext:
    return prepare(copy.deepcopy(trained), data, make_config())


def fake_sensitivity(ctx: SearchContext, sensitive: str) -> dict[str, list[tuple[float, float]]]:
    """Every scale of ``sensitive`` costs points; the other layers cost nothing."""
    scales = [4.0, 2.0, 1.0, 0.5, 0.25, 0.1]
    out = {}
    for space in ctx.spaces[:-1]:  # the output layer is never scanned
        drops = [10.0 / s if space.name == sensitive else 0.0 for s in scales]
        out[space.name] = list(zip(scales, drops))
    return out


def params_ratio(ctx: SearchContext, params: dict[str, Any]) -> float:
    plan = plan_from_params(ctx.model, ctx.spaces, params, ctx.config)
    return ctx.compression(plan)


def test_ratio_seeds_reach_their_targets_in_order(ctx: SearchContext) -> None:
    sensitive = ctx.spaces[0].name
    seeds = ratio_seeds(
        ctx.model, ctx.spaces, ctx.layers, ctx.config, fake_sensitivity(ctx, sensitive)
    )
    assert seeds, "at least the 2x target is reachable on tinycnn"
    labels = [label for label, _ in seeds]
    assert labels == sorted(labels, key=lambda lab: float(lab[len("ratio-") : -1]))
    ratios = [params_ratio(ctx, params) for _, params in seeds]
    assert ratios == sorted(ratios)
    layer_params = sum(info.params for info in ctx.layers)
    for (label, params), ratio in zip(seeds, ratios):
        target = float(label[len("ratio-") : -1])
        plan = plan_from_params(ctx.model, ctx.spaces, params, ctx.config)
        predicted = layer_params / max(ctx.plan_cost(plan).params - _rest(ctx), 1)
        assert predicted >= target * 0.999, (label, predicted)
        assert ratio > 1.0


def _rest(ctx: SearchContext) -> int:
    """Parameters outside the inventory's layers (biases of BN etc.)."""
    return ctx.baseline_cost.params - sum(info.params for info in ctx.layers)


def test_the_cheap_layers_are_compressed_before_the_sensitive_one(ctx: SearchContext) -> None:
    sensitive = ctx.spaces[0].name
    seeds = dict(
        ratio_seeds(ctx.model, ctx.spaces, ctx.layers, ctx.config, fake_sensitivity(ctx, sensitive))
    )
    first = seeds["ratio-2x"]
    others = [s for s in ctx.spaces[1:-1] if s.name != sensitive]
    # at 2x the free layers are squeezed before the costly one is touched at all, when that
    # suffices; either way the free ones are compressed
    assert (
        any(first[s.method_param] != KEEP for s in others)
        or first[ctx.spaces[0].method_param] != KEEP
    )


def test_an_unreachable_target_is_not_seeded(ctx: SearchContext) -> None:
    config = make_config(ratio_targets=(2.0, 1e6))
    sens = fake_sensitivity(ctx, ctx.spaces[0].name)
    labels = [label for label, _ in ratio_seeds(ctx.model, ctx.spaces, ctx.layers, config, sens)]
    assert "ratio-1e+06x" not in labels


def test_ratio_seeds_come_right_after_the_first_seed(ctx: SearchContext) -> None:
    sens = fake_sensitivity(ctx, ctx.spaces[0].name)
    labels = [
        label
        for label, _ in seed_trials(ctx.model, ctx.spaces, ctx.layers, ctx.config, sensitivity=sens)
    ]
    assert labels[0] == "evbmf-tucker2"
    assert labels[1].startswith("ratio-")
    without = seed_trials(
        ctx.model, ctx.spaces, ctx.layers, make_config(ratio_targets=()), sensitivity=sens
    )
    assert not any(label.startswith("ratio-") for label, _ in without)


def test_no_ratio_seeds_without_targets(ctx: SearchContext) -> None:
    config = make_config(ratio_targets=())
    sens = fake_sensitivity(ctx, ctx.spaces[0].name)
    assert ratio_seeds(ctx.model, ctx.spaces, ctx.layers, config, sens) == []
    assert small_layers(ctx.spaces, ctx.layers, config) == set()


@pytest.mark.parametrize("bad", [(1.0,), (0.5,), (float("inf"),)])
def test_ratio_targets_are_validated(bad: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="ratio_targets"):
        make_config(ratio_targets=bad)


def test_spend_steps_is_validated() -> None:
    with pytest.raises(ValueError, match="spend_steps"):
        make_config(spend_steps=-1)


# -- spending the margin ----------------------------------------------------------------------


def _completed_trial(ctx: SearchContext, params: dict[str, Any]) -> optuna.trial.FrozenTrial:
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(params)
    trial = study.ask()
    for space in ctx.spaces:
        trial.suggest_categorical(space.method_param, list(space.methods))
        trial.suggest_float(space.scale_param, *ctx.config.rank_scale, log=True)
    study.tell(trial, 1.0)
    return study.trials[0]


def test_spending_bisects_towards_more_compression_while_the_tolerance_holds(
    trained: nn.Module, data: DataBundle
) -> None:
    config = make_config(max_accuracy_drop=100.0, spend_steps=2)  # every plan meets 100 points
    ctx = prepare(copy.deepcopy(trained), data, config)
    params: dict[str, Any] = {}
    for space in ctx.spaces:
        params[space.method_param] = space.methods[1]
        params[space.scale_param] = 2.0
    trial = _completed_trial(ctx, params)
    plan = plan_from_params(ctx.model, ctx.spaces, trial.params, config)
    spent = spend_margin(ctx, trial, plan, 0.0, epochs=1, seed=0)
    assert spent.skipped is None
    assert [s["factor"] for s in spent.steps] == [0.5, 0.3536], spent.steps  # met: smaller next
    assert all(s["met"] for s in spent.steps)
    assert spent.plan is not None
    assert ctx.compression(spent.plan) == spent.steps[-1]["compression"]
    assert spent.steps[-1]["compression"] > spent.steps[0]["compression"] > ctx.compression(plan)
    assert spent.to_dict(1.0)["improved"] is True


def test_spending_backs_off_after_a_miss_and_keeps_the_plan_when_nothing_meets(
    trained: nn.Module, data: DataBundle
) -> None:
    config = make_config(max_accuracy_drop=1.0, spend_steps=2, epochs_per_trial=1)
    ctx = prepare(copy.deepcopy(trained), data, config)
    params = {}
    for space in ctx.spaces:
        params[space.method_param] = space.methods[1]
        params[space.scale_param] = 0.1  # already tiny: smaller is ruinous
    trial = _completed_trial(ctx, params)
    plan = plan_from_params(ctx.model, ctx.spaces, trial.params, config)
    spent = spend_margin(ctx, trial, plan, 0.0, epochs=1, seed=0)
    assert len(spent.steps) >= 1
    misses = [s for s in spent.steps if not s["met"]]
    if misses:  # after a miss the next factor is larger
        first_miss = spent.steps.index(misses[0])
        if first_miss + 1 < len(spent.steps):
            assert spent.steps[first_miss + 1]["factor"] > misses[0]["factor"]
    if not any(s["met"] for s in spent.steps):
        assert spent.plan is None


def test_spending_is_skipped_without_margin_or_steps(ctx: SearchContext, tmp_path: Path) -> None:
    params = {s.method_param: KEEP for s in ctx.spaces} | {s.scale_param: 1.0 for s in ctx.spaces}
    trial = _completed_trial(ctx, params)
    plan = plan_from_params(ctx.model, ctx.spaces, trial.params, ctx.config)
    tight = spend_margin(ctx, trial, plan, ctx.config.max_accuracy_drop - 0.1, epochs=1, seed=0)
    assert tight.skipped is not None and "margin" in tight.skipped and tight.steps == []
    ctx.config = make_config(spend_steps=0)
    off = spend_margin(ctx, trial, plan, 0.0, epochs=1, seed=0)
    assert off.skipped == "spend_steps is 0"


@pytest.mark.parametrize(("trials", "seeds"), [(1, 1), (3, 3), (6, 5), (8, 6), (40, 30)])
def test_seeds_leave_a_quarter_of_the_budget_to_the_sampler(trials: int, seeds: int) -> None:
    assert seed_budget(trials) == seeds
