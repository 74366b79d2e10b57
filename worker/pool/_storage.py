"""The Optuna storage the workers share: the job database, with trial heartbeats.

A worker that runs a trial records a heartbeat for it every ``trial_heartbeat_seconds``
(rounded up to whole seconds, Optuna's unit). A RUNNING trial whose heartbeat is older than
twice that is *stale*: its worker died. :func:`optuna.storages.fail_stale_trials` (run by Optuna
before every trial and by the pool's reaper on a timer) fails it, and
:class:`StaleTrialCallback` enqueues the same parameters again as a WAITING trial, which the
next worker to ask for a trial runs. The retry records the failed trial's number in its
``retry_history`` system attribute, which is how the budget knows not to count the failure.

The storage is a :class:`~worker.pool._resilient_storage.ResilientRDBStorage`: its heartbeat
survives a database outage, a stale trial is reaped only once the same process has seen it
stale twice a grace period apart, and a trial's own writes wait out an outage, so a trial that
runs across a database restart is neither reaped nor run twice.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial

from service.settings import Settings
from service.store import normalize_url
from service.store.engine import postgres_engine_kwargs
from worker.pool._resilient_storage import ResilientRDBStorage
from worker.structured_logs import log_event

__all__ = [
    "STALE_TRIAL_MAX_RETRY",
    "WORKER_ATTR",
    "StaleTrialCallback",
    "delete_study_if_exists",
    "heartbeat_interval",
    "optuna_storage",
    "study_exists",
]

logger = logging.getLogger(__name__)

#: User attribute naming the worker that ran (or is running) a trial.
WORKER_ATTR = "worker"
#: How often a trial whose worker died is run again before its failure counts.
STALE_TRIAL_MAX_RETRY = 3

try:  # Optuna >= 4.9 renamed the callback; the old name is a deprecated alias.
    from optuna.storages import RetryHeartbeatStaleTrialCallback as _Retry
except ImportError:  # pragma: no cover - older Optuna
    from optuna.storages import RetryFailedTrialCallback as _Retry


class StaleTrialCallback:
    """Log a trial that went stale (its worker died), then retry it (see the module doc)."""

    def __init__(self, max_retry: int = STALE_TRIAL_MAX_RETRY) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self._retry = _Retry(max_retry=max_retry)
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = list(trial.system_attrs.get("retry_history", []))
        log_event(
            logger,
            logging.WARNING,
            "trial_reaped",
            f"trial {trial.number} of {study.study_name} stopped sending heartbeats "
            f"(worker {trial.user_attrs.get(WORKER_ATTR, '?')} died, or lost the database); "
            + (
                "running it again"
                if len(history) < self.max_retry
                else f"it failed {len(history) + 1} times, not retrying"
            ),
            trial=trial.number,
            study=study.study_name,
            dead_worker=trial.user_attrs.get(WORKER_ATTR),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self._retry(study, trial)


def heartbeat_interval(settings: Settings) -> int:
    """Optuna's trial heartbeat interval in whole seconds (at least 1)."""
    return max(1, math.ceil(settings.trial_heartbeat_seconds))


def optuna_storage(settings: Settings, *, attempts: int = 5) -> ResilientRDBStorage:
    """An RDB storage on ``settings.database_url`` with heartbeats and stale-trial retries,
    whose running trials survive a database outage (:mod:`worker.pool._resilient_storage`).

    Creating Optuna's tables races when several workers start at once on a fresh database;
    the creation is retried ``attempts`` times.
    """
    url = normalize_url(settings.database_url)
    engine_kwargs: dict[str, Any]
    if url.get_backend_name() == "sqlite":
        # Wait for the writer instead of failing: workers and the API share one file.
        engine_kwargs = {"connect_args": {"timeout": 60.0}}
    else:  # the store's pool settings: pre-ping (reconnects after a restart), sizes, recycle
        engine_kwargs = postgres_engine_kwargs(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_recycle_s=settings.db_pool_recycle_seconds,
        )
    interval = heartbeat_interval(settings)
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return ResilientRDBStorage(
                    url.render_as_string(hide_password=False),
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=interval,
                    grace_period=2 * interval,
                    heartbeat_stale_trial_callback=StaleTrialCallback(),
                )
        except Exception as exc:  # a concurrent table creation, a database starting up
            if attempt == attempts:
                raise
            logger.warning("opening the Optuna storage failed (%s); retrying", exc)
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def study_exists(storage: optuna.storages.BaseStorage, study_name: str) -> bool:
    """True when the storage holds a study called ``study_name``."""
    try:
        storage.get_study_id_from_name(study_name)
    except KeyError:
        return False
    return True


def delete_study_if_exists(storage: optuna.storages.BaseStorage, study_name: str) -> bool:
    """Delete the study ``study_name`` with its trials; False when there was none."""
    try:
        optuna.delete_study(study_name=study_name, storage=storage)
    except KeyError:
        return False
    return True
