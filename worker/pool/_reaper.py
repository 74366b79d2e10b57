"""The reaper: fails the trials of dead workers without waiting for a new trial to start.

Optuna fails stale trials only when some worker starts a trial of the same study. When every
live worker is busy (or idle because the dead trial fills the last budget slot), the dead
trial would hold its slot indefinitely; the reaper looks at every SEARCHING job's study on a
timer, fails its stale trials (which enqueues their retries, see
:mod:`worker.pool._storage`) and corrects the job's progress so the job is handed out again.

Optuna also never considers stale a RUNNING trial that has no heartbeat at all: one whose
worker died between taking the trial and the heartbeat thread's first write (a short window,
but a SIGKILL can land in it, and the trial would then block its budget slot forever). The
reaper fails such a trial too once it has seen it RUNNING without any heartbeat for
``silent_after`` seconds (by its own clock, so clock skew between machines does not matter),
and retries it like a stale one. A reaper that could not reach the database forgets what it
had seen: the silence must be seen again, whole, after the database answers.

The reaper reads the job table through the :class:`~service.store.Store` and Optuna's heartbeat
table through :mod:`service.store.optuna_tables`. While the database is unreachable it says so
(once per outage), whatever error a library wrapped the outage in.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import warnings
from collections.abc import Callable, Collection

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import TrialState

from service.store import JobRecord, JobStatus, Store, describe_outage
from service.store.optuna_tables import trials_with_heartbeat
from worker.pool._budget import count
from worker.structured_logs import log_event

__all__ = ["Reaper", "searching_job_ids"]

logger = logging.getLogger(__name__)


def searching_job_ids(store: Store) -> list[str]:
    """Ids of the SEARCHING jobs, oldest first (:meth:`Store.searching_job_ids`)."""
    return store.searching_job_ids()


def with_heartbeat(storage: optuna.storages.BaseStorage, trial_ids: Collection[int]) -> set[int]:
    """The trials among ``trial_ids`` that recorded at least one heartbeat (all of them when
    the storage is not Optuna's RDB storage)."""
    if not trial_ids or not isinstance(storage, optuna.storages.RDBStorage):
        return set(trial_ids)
    return trials_with_heartbeat(storage.engine, trial_ids)


class Reaper:
    """Fails stale trials of SEARCHING jobs every ``interval`` seconds (in a thread), or once
    per :meth:`reap_once` call."""

    def __init__(
        self,
        store: Store,
        storage: Callable[[], optuna.storages.BaseStorage],
        *,
        worker_id: str,
        interval: float,
        silent_after: float,
    ) -> None:
        self.store = store
        self._storage = storage
        self.worker_id = worker_id
        self.interval = interval
        self.silent_after = silent_after
        self._studies: dict[str, optuna.Study] = {}
        # job id → {trial id: when first seen RUNNING without any heartbeat}
        self._silent: dict[str, dict[int, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = False

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.reap_logged()

    def reap_logged(self) -> bool:
        """:meth:`reap_once`, logging instead of raising (the reaper must never die of a
        database hiccup); False when it failed.

        While the database is unreachable (a server restarting, connections refused) that is
        logged once, saying so (``reaper_db_unavailable``), whatever a library wrapped the
        error in, and once more when the database answers again (``reaper_db_reconnected``).
        """
        try:
            self.reap_once()
        except Exception as exc:
            outage = describe_outage(exc)
            if outage is not None:  # blind meanwhile: silence seen before proves nothing
                self._silent.clear()
            if outage is None:
                log_event(
                    logger,
                    logging.WARNING,
                    "reaper_failed",
                    f"reaping stale trials failed: {type(exc).__name__}: {exc}",
                    worker=self.worker_id,
                )
            elif not self._outage:
                self._outage = True
                log_event(
                    logger,
                    logging.WARNING,
                    "reaper_db_unavailable",
                    f"reaping stale trials paused: {outage}; retrying every {self.interval:g}s",
                    worker=self.worker_id,
                )
            return False
        if self._outage:
            self._outage = False
            log_event(
                logger,
                logging.INFO,
                "reaper_db_reconnected",
                "the database answers again; reaping stale trials resumed",
                worker=self.worker_id,
            )
        return True

    def _study(self, job: JobRecord) -> optuna.Study | None:
        study = self._studies.get(job.id)
        if study is None:
            try:
                study = optuna.load_study(
                    study_name=job.study_name,
                    storage=self._storage(),
                    sampler=optuna.samplers.RandomSampler(),
                )
            except KeyError:  # being cancelled or prepared again
                return None
            self._studies[job.id] = study
        return study

    def _fail_silent(self, job_id: str, study: optuna.Study) -> None:
        """Fail (and retry) RUNNING trials that never recorded a heartbeat (module doc)."""
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        ids = {t._trial_id for t in running}
        unheard = ids - with_heartbeat(self._storage(), ids)
        now = time.monotonic()
        previous = self._silent.get(job_id, {})
        current = {trial_id: previous.get(trial_id, now) for trial_id in unheard}
        for trial_id, first in list(current.items()):
            if now - first < self.silent_after:
                continue
            del current[trial_id]
            try:
                changed = study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue
            callback = getattr(self._storage(), "heartbeat_stale_trial_callback", None)
            if changed and callback is not None:
                callback(study, copy.deepcopy(study._storage.get_trial(trial_id)))
        self._silent[job_id] = current

    def reap_once(self) -> int:
        """Fail the stale trials of every SEARCHING job; return how many jobs' progress was
        corrected."""
        corrected = 0
        with self._lock:
            ids = searching_job_ids(self.store)
            for gone in set(self._studies) - set(ids):
                del self._studies[gone]
            for gone in set(self._silent) - set(ids):
                del self._silent[gone]
            for job_id in ids:
                try:
                    job = self.store.load_job(job_id)
                except Exception:
                    continue
                if job.status is not JobStatus.SEARCHING:
                    continue
                study = self._study(job)
                if study is None:
                    continue
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ExperimentalWarning)
                        optuna.storages.fail_stale_trials(study)
                    self._fail_silent(job_id, study)
                    counts = count(study)
                except KeyError:  # the study was deleted meanwhile
                    self._studies.pop(job_id, None)
                    continue
                if (counts.done, counts.running) != (job.trials_done, job.trials_running):
                    self.store.update_progress(
                        job_id,
                        trials_done=counts.done,
                        trials_running=counts.running,
                        eta_s=job.eta_s,
                    )
                    corrected += 1
                    log_event(
                        logger,
                        logging.DEBUG,
                        "progress_corrected",
                        f"{counts.done} trials done, {counts.running} running",
                        worker=self.worker_id,
                        job=job_id,
                    )
        return corrected
