"""Tests for the feasibility pruner: stop a trial only when it cannot meet the tolerance."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from worker.search import FeasibilityPruner
from worker.search._pruning import ACCURACY_ATTR

BASELINE = 0.96
MAX_DROP = 1.5  # points: tolerance 1 + verification slack 0.5


def completed(curve: list[float]) -> optuna.trial.FrozenTrial:
    """A finished trial whose accuracy after each epoch is ``curve`` (the last is its end)."""
    return optuna.trial.create_trial(
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        value=1.0,
        intermediate_values=dict(enumerate(curve)),
        user_attrs={ACCURACY_ATTR: curve[-1]},
        state=TrialState.COMPLETE,
    )


def study_with(*curves: list[float], n_startup: int = 3) -> optuna.Study:
    study = optuna.create_study(
        direction="maximize",
        pruner=FeasibilityPruner(BASELINE, MAX_DROP, n_startup_trials=n_startup),
    )
    for curve in curves:
        study.add_trial(completed(curve))
    return study


def prunes(study: optuna.Study, accuracy: float, step: int = 0) -> bool:
    trial = study.ask()
    trial.report(accuracy, step)
    return trial.should_prune()


# Three finished trials: the best gained 5 points from epoch 0 to the end, none after epoch 1.
HISTORY = ([0.90, 0.95, 0.95], [0.93, 0.955, 0.955], [0.80, 0.85, 0.85])


def test_keeps_a_trial_that_can_still_recover_within_the_tolerance() -> None:
    # 0.90 + 5 points of recovery = 0.95: 1 point below the baseline, within 1.5.
    assert not prunes(study_with(*HISTORY), 0.90)
    # the median pruner would stop it: 0.90 is below the median epoch-0 accuracy (0.90 ties,
    # so use a value just under it), although it can end within the tolerance
    median = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=3)
    )
    for curve in HISTORY:
        median.add_trial(completed(curve))
    assert prunes(median, 0.899)
    assert not prunes(study_with(*HISTORY), 0.899)


def test_prunes_a_trial_beyond_any_recovery_seen() -> None:
    # 0.85 + 5 = 0.90: 6 points below, beyond 1.5
    assert prunes(study_with(*HISTORY), 0.85)


def test_later_epochs_allow_only_the_recovery_seen_from_there() -> None:
    study = study_with(*HISTORY)
    # at epoch 1 nobody gained anything more: 0.94 is 2 points down, beyond 1.5
    assert prunes(study, 0.94, step=1)
    assert not prunes(study, 0.95, step=1)  # 1 point down


def test_boundary_is_the_max_drop_itself() -> None:
    study = study_with(*HISTORY)
    assert not prunes(study, 0.945, step=1)  # exactly 1.5 points: kept
    assert prunes(study, 0.944, step=1)


def test_no_pruning_before_enough_completed_trials() -> None:
    assert not prunes(study_with(*HISTORY[:2]), 0.10)
    assert prunes(study_with(*HISTORY[:2], n_startup=2), 0.10)


def test_recovery_is_never_negative() -> None:
    # every finished trial lost accuracy after epoch 0: no recovery is assumed, none subtracted
    study = study_with([0.96, 0.95], [0.955, 0.95], [0.96, 0.94])
    assert study.pruner.recovery(study, 0) == 0.0  # type: ignore[attr-defined]
    assert not prunes(study, 0.946)


@pytest.mark.parametrize(
    ("args", "match"),
    [((1.5, 1.0), "fraction"), ((0.9, -1.0), "points"), ((0.9, 1.0, 0), "n_startup")],
)
def test_rejects_bad_settings(args: tuple[float, ...], match: str) -> None:
    baseline, drop, *rest = args
    kwargs = {"n_startup_trials": int(rest[0])} if rest else {}
    with pytest.raises(ValueError, match=match):
        FeasibilityPruner(baseline, drop, **kwargs)
