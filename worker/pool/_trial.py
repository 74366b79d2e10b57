"""One search trial of a job, run by a worker through the job's shared Optuna study.

:class:`TrialRun` replaces what were nested closures of the worker: :meth:`TrialRun.attempt`
checks the budget and the job's state, then trains the plan; :meth:`TrialRun.objective` is what
Optuna calls, and turns a database outage inside the trial into an interrupted (requeued,
uncounted) trial. The :class:`TrialOutcome` says how it ended. A trial that another process
failed as stale while this worker still ran it (its heartbeat found out, see
:mod:`worker.pool._resilient_storage`) is abandoned at its next epoch: ``reaped``, neither
counted nor queued again here (the reaper's retry already is).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

import optuna

from service.store import JobRecord, is_database_unavailable
from worker.pool._budget import INTERRUPTED_ATTR, over_budget
from worker.pool._context import JobContext
from worker.pool._host import WorkerHost
from worker.pool._storage import WORKER_ATTR
from worker.search import SearchStopped, make_objective

__all__ = ["OverBudget", "TrialOutcome", "TrialRun", "frozen_trial"]

OutcomeKind = Literal[
    "none", "complete", "pruned", "failed", "stopped", "reaped", "over_budget", "error"
]


class OverBudget(SearchStopped):
    """Raised inside a trial that started when the budget was already taken."""


@dataclass
class TrialOutcome:
    """How one trial of :meth:`Worker.run_trial` ended."""

    kind: OutcomeKind = "none"
    number: int | None = None
    error: str | None = None


class TrialRun:
    """One trial of ``job`` by ``worker``, at most ``budget`` trials counted in the study."""

    def __init__(self, worker: WorkerHost, job: JobRecord, jc: JobContext, budget: int) -> None:
        self.worker = worker
        self.job = job
        self.jc = jc
        self.budget = budget
        self.outcome = TrialOutcome()
        self._trial_id: int | None = None
        self._train = make_objective(
            jc.ctx, should_stop=lambda: self.reaped() or worker.trial_should_stop(job.id)
        )

    def reaped(self) -> bool:
        """True once this trial's heartbeat found it failed by another process."""
        return self._trial_id is not None and self.worker.storage.was_reaped(self._trial_id)

    def run(self) -> TrialOutcome:
        """Ask the study for one trial and run it; never raises."""
        outcome = self.outcome
        try:
            self.jc.study.optimize(
                self.objective, n_trials=1, catch=(Exception,), gc_after_trial=False
            )
        except Exception as exc:  # storage trouble while telling Optuna the result
            outcome.kind = "error"
            outcome.error = f"{type(exc).__name__}: {exc}"
        if self.reaped():  # its result (if any) could not be told: the trial was failed
            outcome.kind = "reaped"
            outcome.error = "another process failed it as stale; its retry is queued"
        return outcome

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        """:meth:`attempt`, with a database outage turned into an interrupted trial."""
        outcome = self.outcome
        try:
            return self.attempt(trial)
        except Exception as exc:
            if outcome.kind in ("none", "failed") and is_database_unavailable(exc):
                # Not the plan's fault: the trial is interrupted (not counted) and its plan
                # queued again, like a stopped one. If the database is still down, Optuna
                # cannot record the trial's end either; its heartbeat then stops and the
                # reaper fails and retries it.
                outcome.kind = "stopped"
                outcome.error = f"database unavailable: {type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):
                    trial.set_user_attr(INTERRUPTED_ATTR, True)
            raise

    def attempt(self, trial: optuna.Trial) -> float | tuple[float, float]:
        """Check the budget and the job, then train and evaluate the trial's plan."""
        worker, job, jc, outcome = self.worker, self.job, self.jc, self.outcome
        outcome.number = trial.number
        self._trial_id = trial._trial_id
        trial.set_user_attr(WORKER_ATTR, worker.worker_id)
        if trial.user_attrs.get(INTERRUPTED_ATTR):  # a requeued plan keeps no old verdict
            trial.set_user_attr(INTERRUPTED_ATTR, False)
        trials = jc.study.get_trials(deepcopy=False)
        if over_budget(trials, trial.number, self.budget):
            outcome.kind = "over_budget"
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            raise OverBudget(trial.number)
        _, searching = worker.publish_progress(job, jc)
        if not searching or worker.stop_event.is_set():
            outcome.kind = "stopped"
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            raise SearchStopped(trial.number)
        worker.log(
            logging.INFO,
            "trial_started",
            f"trial {trial.number} started",
            job.id,
            trial=trial.number,
        )
        try:
            value = self._train(trial)
        except optuna.TrialPruned:
            outcome.kind = "pruned"
            raise
        except SearchStopped:
            outcome.kind = "stopped"
            raise
        except Exception as exc:
            outcome.kind = "failed"
            outcome.error = f"{type(exc).__name__}: {exc}"
            raise
        outcome.kind = "complete"
        return value


def frozen_trial(jc: JobContext, number: int | None) -> optuna.trial.FrozenTrial | None:
    """The study's trial ``number`` (None when there is none)."""
    if number is None:
        return None
    for trial in jc.study.get_trials(deepcopy=False):
        if trial.number == number:
            return trial
    return None
