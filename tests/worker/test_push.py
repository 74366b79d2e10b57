"""Tests for pushing the best plan further (worker.search._push) and the drop rounding."""

from __future__ import annotations

import copy
from typing import Any

import optuna
import pytest
from torch import nn

from tensorops import KEEP
from worker.data import DataBundle
from worker.search import SEED_ATTR, SearchConfig, open_study, prepare, run_trials
from worker.search._config import drop_points
from worker.search._push import PUSH_PREFIX, pushed_params
from worker.search._space import LayerSpace


def make_config(**overrides: Any) -> SearchConfig:
    settings: dict[str, Any] = {
        "epochs_per_trial": 1,
        "final_epochs": 0,
        "batch_size": 64,
        "device": "cpu",
        "sensitivity_budgets": (),
        "lr_scales": (1.0,),
    }
    settings.update(overrides)
    return SearchConfig(**settings)


def space(name: str) -> LayerSpace:
    return LayerSpace(
        name=name, methods=(KEEP, "svd"), seed_ranks={"svd": (4,)}, raw_ranks={"svd": (4,)}
    )


def test_drop_of_exactly_the_tolerance_is_not_over_it() -> None:
    assert (0.968 - 0.958) * 100.0 > 1.0  # the float noise the rounding removes
    assert drop_points(0.968, 0.958) == 1.0
    assert drop_points(0.95, 0.96) == -1.0


def test_pushed_params_shrink_decomposed_layers_only_and_respect_the_bound() -> None:
    spaces = [space("a"), space("b"), space("c")]
    params = {
        "a.method": "svd",
        "a.rank_scale": 1.0,
        "b.method": KEEP,
        "b.rank_scale": 1.0,
        "c.method": "svd",
        "c.rank_scale": 0.12,
    }
    pushed = pushed_params(params, spaces, make_config(push_factor=0.5, rank_scale=(0.1, 4.0)))
    assert pushed == {**params, "a.rank_scale": 0.5, "c.rank_scale": 0.1}
    floor = {**params, "a.rank_scale": 0.1, "c.rank_scale": 0.1}
    assert pushed_params(floor, spaces, make_config(rank_scale=(0.1, 4.0))) is None
    assert pushed_params(params, spaces, make_config(push_factor=None)) is None


@pytest.mark.parametrize("factor", [0.0, 1.0, 1.5, -0.2])
def test_config_rejects_push_factors_outside_zero_one(factor: float) -> None:
    with pytest.raises(ValueError, match="push_factor"):
        make_config(push_factor=factor)


def run(trained: nn.Module, data: DataBundle, **overrides: Any) -> list[Any]:
    config = make_config(**overrides)
    ctx = prepare(copy.deepcopy(trained), data, config)
    study = open_study(ctx, storage=optuna.storages.InMemoryStorage(), study_name="s")
    run_trials(ctx, study)
    return study.get_trials(deepcopy=False)


def test_each_new_best_within_reach_is_pushed_next(trained: nn.Module, data: DataBundle) -> None:
    """With a loose tolerance every seed is within reach; each trial that is the most
    compressed so far is followed (after the queued seeds) by its push, ranks x0.5."""
    trials = run(trained, data, trials=12, max_accuracy_drop=50.0, push_factor=0.5)
    pushes = [t for t in trials if str(t.user_attrs.get(SEED_ATTR, "")).startswith(PUSH_PREFIX)]
    assert pushes, "a new best within reach must be pushed"
    by_number = {t.number: t for t in trials}
    for push in pushes:
        parent = by_number[int(push.user_attrs[SEED_ATTR][len(PUSH_PREFIX) :])]
        assert parent.number < push.number
        for name, value in parent.params.items():
            if (
                name.endswith(".rank_scale")
                and parent.params[name[: -len("rank_scale")] + "method"] != KEEP
            ):
                assert push.params[name] == pytest.approx(max(0.1, value * 0.5))
            else:
                assert push.params[name] == value
        # the parent was the most compressed completed trial within reach when it finished
        earlier = [
            t.user_attrs["compression"]
            for t in trials
            if t.number < parent.number and "compression" in t.user_attrs
        ]
        assert all(parent.user_attrs["compression"] > c for c in earlier)
    # a push enqueued in a chain compresses more than the trial it pushes
    for push in pushes:
        parent = by_number[int(push.user_attrs[SEED_ATTR][len(PUSH_PREFIX) :])]
        if "compression" in push.user_attrs:
            assert push.user_attrs["compression"] > parent.user_attrs["compression"]


def test_nothing_is_pushed_when_turned_off_or_out_of_reach(
    trained: nn.Module, data: DataBundle
) -> None:
    off = run(trained, data, trials=8, max_accuracy_drop=50.0, push_factor=None)
    assert not any(str(t.user_attrs.get(SEED_ATTR, "")).startswith(PUSH_PREFIX) for t in off)
    # with no tolerance and no slack, only a trial that lost nothing may be pushed
    strict = run(trained, data, trials=8, max_accuracy_drop=0.0, verify_slack=0.0, pruner="none")
    by_number = {t.number: t for t in strict}
    for push in strict:
        label = str(push.user_attrs.get(SEED_ATTR, ""))
        if label.startswith(PUSH_PREFIX):
            parent = by_number[int(label[len(PUSH_PREFIX) :])]
            assert parent.user_attrs["accuracy_drop"] <= 0.0
