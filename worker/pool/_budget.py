"""The trial budget of a job, counted from its Optuna study (the single source of truth).

A trial *counts* against the budget when it is COMPLETE or PRUNED, or FAILED by an error of its
own. It does not count when it was interrupted (stopped by a cancel or a shutdown, or started
past the budget: user attribute ``interrupted``), nor when its worker died and it was retried
(its number is in another trial's ``retry_history``): the retry counts instead.

Several workers run trials of one job, and two may start one for the last slot at once. Each
worker checks the budget twice: before asking Optuna for a trial (finished + running < budget)
and again inside the new trial (:func:`over_budget`), where trials RUNNING with a lower number
have precedence. The loser is marked interrupted and ends at once without training, so it is
never counted; if it had taken a queued plan (an EVBMF seed, a retry) the plan is queued again
(:func:`requeue_interrupted`).
"""

from __future__ import annotations

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from worker.search import INTERRUPTED_ATTR, SEED_ATTR, best_feasible, requeue_seed

__all__ = [
    "INTERRUPTED_ATTR",
    "Counts",
    "count",
    "counts_against_budget",
    "over_budget",
    "requeue_interrupted",
    "retried_numbers",
]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of trials that died with their worker and were enqueued again."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", ())}


def counts_against_budget(trial: FrozenTrial, retried: set[int]) -> bool:
    """See the module docstring."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return (
        trial.state == TrialState.FAIL
        and not trial.user_attrs.get(INTERRUPTED_ATTR)
        and trial.number not in retried
    )


class Counts:
    """Trial counts of a study: ``done`` (counted), ``running``, ``waiting`` and by state."""

    def __init__(self, trials: list[FrozenTrial]) -> None:
        retried = retried_numbers(trials)
        self.done = sum(1 for t in trials if counts_against_budget(t, retried))
        self.running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        self.waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
        self.complete = sum(1 for t in trials if t.state == TrialState.COMPLETE)
        self.pruned = sum(1 for t in trials if t.state == TrialState.PRUNED)
        self.failed = sum(
            1 for t in trials if t.state == TrialState.FAIL and counts_against_budget(t, retried)
        )
        self.interrupted = sum(
            1 for t in trials if t.state in _FINISHED and not counts_against_budget(t, retried)
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "counted": self.done,
            "complete": self.complete,
            "pruned": self.pruned,
            "failed": self.failed,
            "interrupted_or_retried": self.interrupted,
        }


def count(study: optuna.Study) -> Counts:
    """The counts of ``study`` now."""
    return Counts(study.get_trials(deepcopy=False))


def over_budget(trials: list[FrozenTrial], number: int, budget: int) -> bool:
    """True when trial ``number`` (RUNNING) has no slot: the counted trials plus the trials
    RUNNING with a lower number already fill ``budget``."""
    retried = retried_numbers(trials)
    done = sum(1 for t in trials if counts_against_budget(t, retried))
    ahead = sum(1 for t in trials if t.state == TrialState.RUNNING and t.number < number)
    return done + ahead >= budget


def best_of(study: optuna.Study, max_drop: float) -> tuple[float | None, float | None]:
    """(compression, accuracy) of the best feasible trial so far, or (None, None)."""
    best = best_feasible(study, max_drop)
    if best is None:
        return None, None
    return best.user_attrs.get("compression"), best.user_attrs.get("accuracy")


def requeue_interrupted(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue the plan of an interrupted trial again when it came from the queue.

    An EVBMF seed is enqueued again (:func:`worker.search._study.requeue_seed`); a retry of a
    dead worker's trial is added again as WAITING with the same parameters and retry history.
    Plans the sampler proposed are not kept: the sampler proposes anew.
    """
    if SEED_ATTR in trial.user_attrs:
        requeue_seed(study, trial)
        return
    if "failed_trial" not in trial.system_attrs:
        return
    distributions: dict[str, BaseDistribution] = dict(trial.distributions)
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=dict(trial.params),
            distributions=distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k != INTERRUPTED_ATTR},
            system_attrs=dict(trial.system_attrs),
        )
    )
