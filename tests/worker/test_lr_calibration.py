"""Tests for the learning-rate calibration that runs before a search's first trial."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from torch import nn

from worker.data import DataBundle
from worker.search import SearchConfig, SearchContext, open_study, plan_from_params, prepare
from worker.search import _context as context_module
from worker.search._calibrate import (
    LR_CALIBRATION_ATTR,
    LrCalibration,
    choose_scale,
    scaled_schedule,
)
from worker.search._space import evbmf_params
from worker.training import ScheduleConfig


def make_config(**overrides: Any) -> SearchConfig:
    settings: dict[str, Any] = {
        "trials": 2,
        "epochs_per_trial": 1,
        "final_epochs": 0,
        "batch_size": 64,
        "device": "cpu",
        "sensitivity_budgets": (),
    }
    settings.update(overrides)
    return SearchConfig(**settings)


def context(trained: nn.Module, data: DataBundle, **overrides: Any) -> SearchContext:
    return prepare(copy.deepcopy(trained), data, make_config(**overrides))


# ------------------------------------------------------------------------------- pure parts


def test_choose_scale_takes_the_best_and_the_first_on_a_tie() -> None:
    assert choose_scale(((1.0, 0.90), (0.3, 0.95), (0.1, 0.93))) == 0.3
    assert choose_scale(((1.0, 0.95), (0.3, 0.95), (0.1, 0.90))) == 1.0
    assert choose_scale(((0.1, 0.95), (1.0, 0.95))) == 0.1


def test_choose_scale_never_prefers_a_diverged_run() -> None:
    nan = float("nan")
    assert choose_scale(((1.0, nan), (0.3, 0.20))) == 0.3
    assert choose_scale(((1.0, 0.20), (0.3, nan))) == 1.0
    assert choose_scale(((1.0, nan), (0.3, nan))) == 1.0


@pytest.mark.parametrize("kind", ["triangular2", "constant"])
def test_scaled_schedule_multiplies_both_rates(kind: str) -> None:
    base = ScheduleConfig(kind=kind, base_lr=1e-3 if kind == "constant" else 1e-4, max_lr=1e-3)
    scaled = scaled_schedule(base, 0.25)
    assert math.isclose(scaled.base_lr, base.base_lr * 0.25)
    assert math.isclose(scaled.max_lr, base.max_lr * 0.25)
    assert (scaled.kind, scaled.cycle_epochs) == (base.kind, base.cycle_epochs)
    assert scaled_schedule(base, 1.0) is base


@pytest.mark.parametrize("scales", [(), (0.0,), (1.0, -0.3), (math.inf,), (math.nan,)])
def test_config_rejects_bad_scales(scales: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="lr_scales"):
        make_config(lr_scales=scales)


def test_calibration_record_round_trips_and_rejects_nonsense() -> None:
    record = LrCalibration(scale=0.3, accuracies=((1.0, 0.9), (0.3, 0.95)), seconds=1.5)
    assert LrCalibration.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    with pytest.raises(ValueError, match="scale"):
        LrCalibration.from_dict({"scale": 0})


# ------------------------------------------------------------------------------- measured


@pytest.mark.parametrize("scales", [(60.0, 1.0), (1.0, 60.0)], ids=["wrecking-first", "last"])
def test_calibration_avoids_a_rate_that_wrecks_the_model(
    trained: nn.Module, data: DataBundle, scales: tuple[float, float]
) -> None:
    """AdamW at 0.6 (60 x the default peak) destroys tinycnn; the calibration must see it,
    whichever order the multipliers come in."""
    ctx = context(trained, data, lr_scales=scales)
    calibration = ctx.calibrate_lr()
    scores = dict(calibration.accuracies)
    assert set(scores) == set(scales)
    assert scores[1.0] > 0.6, scores
    assert math.isnan(scores[60.0]) or scores[60.0] < scores[1.0] - 0.2, scores
    assert calibration.scale == 1.0 and ctx.lr_scale == 1.0


def test_calibration_scores_are_the_evbmf_plan_after_a_trial_fine_tune(
    trained: nn.Module, data: DataBundle
) -> None:
    """Ground truth: each recorded accuracy equals a fine-tune of the EVBMF plan, made by hand
    at that multiplier with the same seed."""
    ctx = context(trained, data, lr_scales=(1.0, 0.1))
    calibration = ctx.calibrate_lr()
    plan = plan_from_params(
        ctx.model, ctx.spaces, evbmf_params(ctx.spaces, ctx.layers, ctx.config), ctx.config
    )
    assert len(plan) > 0, "the EVBMF plan compresses something"
    for scale, accuracy in calibration.accuracies:
        model = ctx.compress(plan)
        fit = ctx.finetune(model, epochs=1, seed=ctx.config.seed, lr_scale=scale)
        assert fit.final_val_accuracy == pytest.approx(accuracy, abs=1e-9)
    assert calibration.scale == choose_scale(calibration.accuracies)


def test_one_scale_measures_nothing(trained: nn.Module, data: DataBundle) -> None:
    ctx = context(trained, data, lr_scales=(0.5,))
    calibration = ctx.calibrate_lr()
    assert calibration == LrCalibration(scale=0.5)
    assert ctx.lr_scale == 0.5


def test_every_fine_tune_uses_the_calibrated_rates(
    trained: nn.Module, data: DataBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = context(trained, data)
    ctx.lr_calibration = LrCalibration(scale=0.3)
    seen: list[ScheduleConfig] = []

    def spy(model: nn.Module, data: DataBundle, schedule: ScheduleConfig, **kw: Any) -> Any:
        seen.append(schedule)
        raise RuntimeError("stop here")

    monkeypatch.setattr(context_module, "finetune", spy)
    with pytest.raises(RuntimeError, match="stop here"):
        ctx.finetune(copy.deepcopy(trained), epochs=1, seed=0)
    assert math.isclose(seen[0].max_lr, ctx.config.schedule.max_lr * 0.3)
    assert math.isclose(seen[0].base_lr, ctx.config.schedule.base_lr * 0.3)


def test_the_creator_calibrates_once_and_joiners_read_it_from_the_study(
    trained: nn.Module, data: DataBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    creator = context(trained, data, lr_scales=(1.0, 0.1))
    study = open_study(creator, storage=storage, study_name="s")
    recorded = study.user_attrs[LR_CALIBRATION_ATTR]
    assert recorded == creator.lr_calibration.to_dict()  # type: ignore[union-attr]
    assert len(recorded["accuracies"]) == 2

    joiner = context(trained, data, lr_scales=(1.0, 0.1))

    def must_not_run() -> LrCalibration:
        raise AssertionError("a joining process must not calibrate again")

    monkeypatch.setattr(joiner, "calibrate_lr", must_not_run)
    open_study(joiner, storage=storage, study_name="s", fail_running=False)
    assert joiner.lr_calibration == creator.lr_calibration
    assert joiner.lr_scale == creator.lr_scale


def test_a_study_without_a_record_fine_tunes_at_the_schedule_rates(
    trained: nn.Module, data: DataBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study made before calibration existed (trials, no record) keeps the plain rates."""
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    old.enqueue_trial({})
    ctx = context(trained, data, lr_scales=(1.0, 0.1))
    monkeypatch.setattr(ctx, "calibrate_lr", lambda: pytest.fail("must not calibrate"))
    open_study(ctx, storage=storage, study_name="s", fail_running=False)
    assert ctx.lr_calibration is None and ctx.lr_scale == 1.0
