"""The latency constraint ``max_latency_ratio`` ("never slower"): options, trial constraint,
verification, margin spending and report.

Timings are replaced by a fake :meth:`SearchContext.latency` that calls chosen plans slow, so
these tests do not depend on the machine's load.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from pydantic import ValidationError
from torch import nn

from service.job_options import DEFAULTS, JobOptions
from service.spec import JobSpec
from tensorops import Choice, Plan, get_method
from worker.data import DataBundle
from worker.search import (
    CONSTRAINT_ATTR,
    SearchConfig,
    SearchContext,
    best_feasible,
    finalize,
    open_study,
    plan_from_params,
    prepare,
    run_trials,
    search_config,
    verification_candidates,
)
from worker.search._spend import spend_margin
from worker.search._study import LATENCY_MET_ATTR, LATENCY_RATIO_ATTR

ARCH = {"arch": "rankopt:tinycnn", "kwargs": {"num_classes": 10, "in_channels": 1}}
SLOW, FAST = 1.5, 0.9  # fake latency ratios


def make_config(**overrides: Any) -> SearchConfig:
    settings: dict[str, Any] = {
        "trials": 6,
        "epochs_per_trial": 1,
        "final_epochs": 0,
        "batch_size": 64,
        "device": "cpu",
        "max_accuracy_drop": 3.0,
        "max_latency_ratio": 1.0,
        "latency_repeats": 3,
        "spend_steps": 0,
    }
    settings.update(overrides)
    return SearchConfig(**settings)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fake_latency(
    monkeypatch: pytest.MonkeyPatch, slow: Callable[[nn.Module], bool]
) -> list[nn.Module]:
    """Make ``ctx.latency(model)`` the baseline's times SLOW when ``slow(model)``, else FAST.
    Returns the list of models timed."""
    timed: list[nn.Module] = []

    def latency(self: SearchContext, model: nn.Module) -> float:
        assert self.baseline_latency is not None
        timed.append(model)
        return self.baseline_latency * (SLOW if slow(model) else FAST)

    monkeypatch.setattr(SearchContext, "latency", latency)
    return timed


def decomposes(ctx: SearchContext, name: str) -> Callable[[nn.Module], bool]:
    """True for a model whose layer ``name`` is no longer the original's dense layer."""
    dense = type(ctx.model.get_submodule(name))
    return lambda model: type(model.get_submodule(name)) is not dense


def search(ctx: SearchContext, out: Path) -> tuple[optuna.Study, dict[str, Any]]:
    study = open_study(ctx, storage=optuna.storages.InMemoryStorage(), study_name="job")
    run_trials(ctx, study)
    return study, finalize(ctx, study, out, arch=ARCH).report


def fake_trial(ctx: SearchContext, plan: Plan, *, drop: float, latency_met: bool | None) -> Any:
    return optuna.trial.create_trial(
        value=ctx.compression(plan),
        user_attrs={
            "plan": plan.to_dict(),
            "compression": ctx.compression(plan),
            "accuracy": ctx.baseline_accuracy - drop / 100,
            "accuracy_drop": drop,
            LATENCY_MET_ATTR: latency_met,
        },
    )


# --------------------------------------------------------------------------- options


def test_default_is_no_constraint_everywhere() -> None:
    assert DEFAULTS.max_latency_ratio is None
    assert SearchConfig().max_latency_ratio is None
    assert JobSpec.model_fields["max_latency_ratio"].default is None
    assert search_config(JobOptions(max_latency_ratio=1.0)).max_latency_ratio == 1.0


@pytest.mark.parametrize("value", [0, -1.0])
def test_the_ratio_must_be_positive(value: float) -> None:
    with pytest.raises(ValidationError, match="max_latency_ratio"):
        JobOptions(max_latency_ratio=value)
    with pytest.raises(ValueError, match="max_latency_ratio"):
        SearchConfig(max_latency_ratio=value)


def test_the_spec_accepts_and_refuses_it() -> None:
    base = {"arch": "rankopt:lenet5", "dataset": "digits"}
    assert JobSpec.model_validate({**base, "max_latency_ratio": 1.0}).max_latency_ratio == 1.0
    with pytest.raises(ValidationError, match="max_latency_ratio"):
        JobSpec.model_validate({**base, "max_latency_ratio": 0})


# --------------------------------------------------------------------------- the search


def test_a_constraint_of_one_never_returns_a_slower_model(
    trained: nn.Module, data: DataBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plans decomposing the first searchable layer are 'slow': the search marks them
    infeasible and never chooses one, whatever their compression."""
    ctx = prepare(copy.deepcopy(trained), data, make_config())
    assert ctx.baseline_latency is not None  # measured for the constraint (objective params)
    is_slow = decomposes(ctx, ctx.spaces[0].name)
    fake_latency(monkeypatch, is_slow)
    study, report = search(ctx, tmp_path)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert any(t.user_attrs[LATENCY_MET_ATTR] is False for t in done)  # some plans were slow
    for trial in done:  # every trial timed, whatever the objective; slow ones infeasible
        plan = Plan.from_dict(trial.user_attrs["plan"])
        slow = is_slow(ctx.compress(plan))
        assert trial.user_attrs[LATENCY_RATIO_ATTR] == pytest.approx(SLOW if slow else FAST)
        assert trial.user_attrs[LATENCY_MET_ATTR] is (not slow)
        constraint = trial.user_attrs[CONSTRAINT_ATTR]
        assert len(constraint) == 2 and (constraint[1] > 0) is slow
        assert trial.system_attrs["constraints:latency_ratio"] == pytest.approx(constraint[1])
    best = best_feasible(study, 100.0)
    assert best is None or best.user_attrs[LATENCY_MET_ATTR] is True
    final = report["final"]
    assert final["latency_ratio"] <= 1.0 and final["latency_constraint_met"] is True
    assert final["max_latency_ratio"] == 1.0 and final["constraint_met"] is True
    if report["found_feasible"]:
        assert not is_slow(ctx.compress(Plan.from_dict(report["plan"])))
        assert final["latency_ratio"] == pytest.approx(FAST)
    assert all(c[LATENCY_MET_ATTR] is not False for c in report["verification"] if c["met"])


def test_the_original_is_kept_when_every_plan_is_slower(
    trained: nn.Module, data: DataBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = prepare(copy.deepcopy(trained), data, make_config())
    original = n_params(ctx.model)
    fake_latency(monkeypatch, lambda model: n_params(model) != original)
    study, report = search(ctx, tmp_path)
    assert all(
        t.user_attrs.get(LATENCY_MET_ATTR) is False
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
        and n_params(ctx.compress(Plan.from_dict(t.user_attrs["plan"]))) != original
    )
    assert not report["found_feasible"] and report["plan"] == Plan().to_dict()
    reason = report["kept_original_reason"]
    assert "latency" in reason and ("slower than the limit" in reason or "candidate" in reason)
    final = report["final"]
    assert final["latency_ratio"] == 1.0  # the original itself
    assert final["latency_constraint_met"] is True and final["constraint_met"] is True


def _two_plans(ctx: SearchContext) -> tuple[Plan, Plan]:
    """Two plans that meet a generous tolerance: ``big`` more compressed than ``small``."""
    layer = ctx.spaces[1].name
    full = get_method("tucker2").max_ranks(ctx.model.get_submodule(layer))
    small = Plan({layer: Choice("tucker2", (full[0] // 2, full[1] // 2))})
    big = Plan({layer: Choice("tucker2", (max(full[0] // 4, 1), max(full[1] // 4, 1)))})
    assert ctx.compression(big) > ctx.compression(small) > 1
    return big, small


def test_verification_re_measures_and_rejects_a_candidate_over_the_limit(
    trained: nn.Module, data: DataBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial timed fast enough during the search but slow after its final fine-tune is
    passed over for the next candidate."""
    ctx = prepare(copy.deepcopy(trained), data, make_config(max_accuracy_drop=100.0))
    big, small = _two_plans(ctx)
    threshold = n_params(ctx.compress(small))
    timed = fake_latency(monkeypatch, lambda model: n_params(model) < threshold)
    study = optuna.create_study(direction="maximize")
    study.add_trial(fake_trial(ctx, big, drop=0.0, latency_met=True))
    study.add_trial(fake_trial(ctx, small, drop=0.0, latency_met=True))
    report = finalize(ctx, study, tmp_path, arch=ARCH).report
    checks = report["verification"]
    assert [(c["trial"], c["met"], c[LATENCY_MET_ATTR]) for c in checks] == [
        (0, False, False),
        (1, True, True),
    ]
    assert checks[0][LATENCY_RATIO_ATTR] == pytest.approx(SLOW)
    assert report["chosen_trial"] == 1 and Plan.from_dict(report["plan"]) == small
    assert report["final"]["latency_ratio"] == pytest.approx(FAST)
    assert len(timed) == 2  # the report reuses the verification's measurement


def test_candidates_over_the_limit_are_never_verified(trained: nn.Module, data: DataBundle) -> None:
    ctx = prepare(copy.deepcopy(trained), data, make_config(max_accuracy_drop=100.0))
    big, small = _two_plans(ctx)
    study = optuna.create_study(direction="maximize")
    study.add_trial(fake_trial(ctx, big, drop=0.0, latency_met=False))
    study.add_trial(fake_trial(ctx, small, drop=0.0, latency_met=True))
    assert [t.number for t in verification_candidates(study, ctx.config)] == [1]
    best = best_feasible(study, 100.0)
    assert best is not None and best.number == 1


def test_spending_the_margin_never_returns_a_plan_over_the_limit(
    trained: nn.Module, data: DataBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(max_accuracy_drop=100.0, spend_steps=2, final_epochs=1)
    ctx = prepare(copy.deepcopy(trained), data, config)
    study = optuna.create_study(direction="maximize")
    params: dict[str, Any] = {}
    for space in ctx.spaces:
        params[space.method_param] = space.methods[1]
        params[space.scale_param] = 2.0
    study.enqueue_trial(params)
    trial = study.ask()
    for space in ctx.spaces:
        trial.suggest_categorical(space.method_param, list(space.methods))
        trial.suggest_float(space.scale_param, *config.rank_scale, log=True)
    study.tell(trial, 1.0)
    frozen = study.trials[0]
    plan = plan_from_params(ctx.model, ctx.spaces, frozen.params, config)
    threshold = n_params(ctx.compress(plan))
    fake_latency(monkeypatch, lambda model: n_params(model) < threshold)  # smaller is slower
    spent = spend_margin(ctx, frozen, plan, 0.0, epochs=1, seed=0)
    assert spent.steps, spent.skipped
    for step in spent.steps:
        if step["compression"] > ctx.compression(plan):
            assert step[LATENCY_MET_ATTR] is False and step["met"] is False
    assert spent.plan is None and spent.latency is None
