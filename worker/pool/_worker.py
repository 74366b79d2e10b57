"""The worker loop: claim single-worker phases first, otherwise run one trial of a search.

One iteration (:meth:`Worker.run_once`):

1. :meth:`Store.claim` hands out, most urgent first, a cancelled job to clean up (its Optuna
   study is deleted), a finalize or prepare phase whose lease died, a search whose budget is
   spent (finalize), or the oldest queued job (prepare). Leased phases run with a
   :class:`LeaseKeeper` renewing the lease every ``heartbeat_seconds``, inside
   :func:`~worker.pool._phases.leased_phase` (:mod:`worker.pool._phases`).
2. Otherwise :meth:`Store.next_search_job` names the SEARCHING job served least recently
   (round-robin across jobs), and the worker runs exactly one trial of it through the shared
   study (:class:`~worker.pool._trial.TrialRun`), then publishes the job's progress. The
   worker that sees the budget spent with no trial running claims the finalize phase itself.

The budget is enforced against the study (see :mod:`worker.pool._budget`); a worker that
dies mid-trial is covered by Optuna's trial heartbeat and the reaper (:mod:`worker.pool._reaper`,
:mod:`worker.pool._storage`).

Shutdown (:attr:`Worker.stop_event`, set by SIGTERM/SIGINT): a running trial stops after its
current epoch and is requeued without counting; a prepare phase is finished (it is short); a
finalize phase gives its lease back at the next epoch boundary so another worker redoes it.
:meth:`Worker.abort` (a second signal) also gives a prepare phase back at its next step.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from service.settings import Settings
from service.store import (
    Claim,
    JobRecord,
    JobStatus,
    Store,
    is_database_unavailable,
)
from worker.pool._budget import Counts, best_of, count, requeue_interrupted
from worker.pool._context import ContextCache, JobContext, PoolContext, worker_seed
from worker.pool._inputs import BadInput, load_inputs, parse_spec, search_config_from_spec
from worker.pool._phases import cleanup_cancelled
from worker.pool._phases import finalize as finalize_phase
from worker.pool._phases import prepare as prepare_phase
from worker.pool._reaper import Reaper
from worker.pool._resilient_storage import ResilientRDBStorage
from worker.pool._storage import (
    delete_study_if_exists,
    heartbeat_interval,
    optuna_storage,
    study_exists,
)
from worker.pool._trial import TrialOutcome, TrialRun, frozen_trial
from worker.search import make_sampler, open_study, prepare, recorded_preparation
from worker.structured_logs import log_event, quiet_optuna
from worker.training import resolve_device

__all__ = [
    "MAX_DB_BACKOFF_S",
    "Worker",
    "db_backoff",
    "default_worker_id",
]

logger = logging.getLogger(__name__)

#: How long a worker leaves a job alone after it failed to load it for a search.
SKIP_JOB_S = 60.0
#: SEARCHING jobs one iteration looks at before it calls itself idle.
MAX_JOBS_PER_STEP = 8
#: Longest wait between two attempts while the database is unreachable.
MAX_DB_BACKOFF_S = 30.0


def db_backoff(poll_interval: float, attempt: int, cap: float = MAX_DB_BACKOFF_S) -> float:
    """Seconds to wait after the ``attempt``-th consecutive database outage (1, 2, ...):
    ``poll_interval`` doubled each time, at most ``cap`` (and at least ``poll_interval``)."""
    return max(poll_interval, min(cap, poll_interval * 2.0 ** min(attempt - 1, 30)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def default_worker_id(index: int = 0) -> str:
    """``<hostname>-<pid>-<index>``."""
    return f"{socket.gethostname()}-{os.getpid()}-{index}"


class Worker:
    """One worker of the pool (see the module docstring).

    Args:
        settings: the service settings (database, artifact and upload folders, intervals).
        store: the job store; by default one opened from ``settings``.
        worker_id: this worker's name in leases, logs and trials; default
            ``<hostname>-<pid>-0``.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; default
            ``settings.device``.
        poll_interval: seconds :meth:`run` waits when there is nothing to do.
        max_cached_jobs: prepared jobs kept in memory.
        stop_event: set it to stop :meth:`run` (see the module docstring for what stops how).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        *,
        worker_id: str | None = None,
        device: str | None = None,
        poll_interval: float = 2.0,
        max_cached_jobs: int = 2,
        stop_event: threading.Event | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        quiet_optuna(handlers=False)
        self.device = str(resolve_device(device or settings.device))  # ValueError: no such device
        self.settings = settings
        self._owns_store = store is None
        self.store = store if store is not None else Store.from_settings(settings)
        self.worker_id = worker_id or default_worker_id()
        self.poll_interval = poll_interval
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self._abort = threading.Event()
        self.cache = ContextCache(max_cached_jobs)
        self._skip: dict[str, float] = {}
        self._storage: ResilientRDBStorage | None = None
        self._storage_lock = threading.Lock()
        self.reaper = Reaper(
            self.store,
            lambda: self.storage,
            worker_id=self.worker_id,
            interval=float(heartbeat_interval(settings)),
            silent_after=4.0 * heartbeat_interval(settings),
        )

    # ------------------------------------------------------------------ plumbing
    @property
    def storage(self) -> ResilientRDBStorage:
        """The shared Optuna storage (opened on first use)."""
        with self._storage_lock:
            if self._storage is None:
                self._storage = optuna_storage(self.settings)
            return self._storage

    def log(
        self, level: int, event: str, message: str, job: str | None = None, **fields: Any
    ) -> None:
        log_event(logger, level, event, message, worker=self.worker_id, job=job, **fields)

    @property
    def aborted(self) -> bool:
        """Whether :meth:`abort` was called (a prepare phase then gives its lease back)."""
        return self._abort.is_set()

    def abort(self) -> None:
        """Stop as soon as possible: like :attr:`stop_event`, and a prepare phase in progress
        gives its lease back instead of finishing."""
        self._abort.set()
        self.stop_event.set()

    def close(self) -> None:
        """Stop the reaper and release database connections."""
        self.reaper.stop()
        if self._storage is not None:
            self._storage.engine.dispose()
        if self._owns_store:
            self.store.dispose()

    # ------------------------------------------------------------------ loop
    def run(self, *, once: bool = False) -> None:
        """Work until :attr:`stop_event` is set (or, with ``once``, until there is nothing
        left to do), then return.

        An iteration that fails because the database cannot be reached (down, restarting, out
        of connections) is retried after a back-off that doubles from ``poll_interval`` up to
        :data:`MAX_DB_BACKOFF_S`; the pools' pre-ping reconnects once the database is back.
        Any other error is logged and the loop goes on.
        """
        self.log(
            logging.INFO, "worker_started", f"worker started on {self.device}", device=self.device
        )
        self.reaper.start()
        outages = 0
        try:
            while not self.stop_event.is_set():
                wait = self.poll_interval
                try:
                    busy = self.run_once()
                except Exception as exc:
                    if once:
                        raise
                    busy = False
                    if is_database_unavailable(exc):
                        outages += 1
                        wait = db_backoff(self.poll_interval, outages)
                        self.log(
                            logging.WARNING,
                            "database_unavailable",
                            f"the database is not reachable ({type(exc).__name__}: "
                            f"{_first_line(exc)}); retrying in {wait:.1f}s",
                            attempt=outages,
                            retry_in_s=round(wait, 3),
                        )
                    else:
                        self.log(
                            logging.ERROR,
                            "loop_error",
                            f"unexpected error, retrying: {type(exc).__name__}: {exc}",
                            exc_info=True,
                        )
                else:
                    if outages:
                        self.log(
                            logging.INFO,
                            "database_reconnected",
                            f"the database answers again after {outages} failed attempt(s)",
                        )
                        outages = 0
                if not busy:
                    if once:
                        break
                    self.stop_event.wait(wait)
        finally:
            self.reaper.stop()
            self.log(logging.INFO, "worker_stopped", "worker stopped")

    def run_once(self) -> bool:
        """Do one piece of work: a claimed phase, or one trial. False when there was none."""
        if self.stop_event.is_set():
            return False
        claim = self.store.claim(self.worker_id)
        if claim is not None:
            self.handle_claim(claim)
            return True
        if self.search_step():
            return True
        self._sweep_cache()
        return False

    def _sweep_cache(self) -> None:
        """Forget jobs that are no longer searching (finished, failed, cancelled elsewhere)."""
        for job_id in self.cache.job_ids():
            try:
                status = self.store.load_job(job_id).status
            except Exception:
                status = None
            if status not in (JobStatus.SEARCHING, JobStatus.FINALIZING):
                self.cache.evict(job_id)

    def search_step(self) -> bool:
        """Run one trial of the next SEARCHING job that has room for one."""
        seen: set[str] = set()
        for _ in range(MAX_JOBS_PER_STEP):
            job = self.store.next_search_job(self.worker_id)
            if job is None or job.id in seen:
                return False
            seen.add(job.id)
            if self._skip.get(job.id, 0.0) > time.monotonic():
                continue
            if self.run_trial(job):
                return True
        return False

    # ------------------------------------------------------------------ contexts
    def build_context(
        self, job: JobRecord, *, create: bool, check: Callable[[], None] = lambda: None
    ) -> JobContext | None:
        """Load the job's inputs, prepare the search context and open the study.

        With ``create`` (the prepare phase) a study left by an earlier attempt is replaced and
        the EVBMF seeds are enqueued; otherwise the study must exist (None when it does not:
        the job is being cancelled).
        """
        started = time.perf_counter()
        spec = parse_spec(job.spec)
        config = search_config_from_spec(spec, self.device, trials=job.trials_total)
        inputs = load_inputs(self.settings, job, spec)
        check()
        # A joining worker takes the baseline and the EVBMF ranks the prepare phase measured.
        prepared = None if create else recorded_preparation(self.storage, job.study_name)
        ctx = PoolContext.of(prepare(inputs.model, inputs.data, config, prepared=prepared))
        check()
        storage = self.storage
        if create:
            if delete_study_if_exists(storage, job.study_name):
                self.log(
                    logging.INFO, "study_replaced", "deleted an earlier attempt's study", job.id
                )
        elif not study_exists(storage, job.study_name):
            return None
        ctx.interrupt = check  # the learning-rate calibration fine-tunes: stay cancellable
        try:
            study = open_study(ctx, storage=storage, study_name=job.study_name, fail_running=False)
        finally:
            ctx.interrupt = None
        study.sampler = make_sampler(replace(config, seed=worker_seed(config.seed, self.worker_id)))
        self.log(
            logging.INFO,
            "context_ready",
            f"{'prepared' if create else 'loaded'} {spec.arch} on {inputs.data.name}: baseline "
            f"accuracy {ctx.baseline_accuracy:.4f}, {len(ctx.spaces)} searchable layers",
            job.id,
            seconds=round(time.perf_counter() - started, 3),
            baseline_accuracy=ctx.baseline_accuracy,
        )
        return JobContext(
            job_id=job.id,
            study_name=job.study_name,
            spec=spec,
            config=config,
            ctx=ctx,
            study=study,
            arch=dict(inputs.arch),
        )

    def _search_context(self, job: JobRecord) -> JobContext | None:
        """The cached context of a job to search, built on first use (None: skip the job)."""
        jc = self.cache.get(job.id)
        if jc is not None:
            return jc
        try:
            jc = self.build_context(job, create=False)
        except BadInput as exc:
            # prepare succeeded with these inputs elsewhere: this worker is set up differently
            # (allow-lists, data roots) or a file vanished. Leave the job to the others.
            self.log(logging.ERROR, "join_failed", f"cannot load the job here: {exc}", job.id)
            self._skip[job.id] = time.monotonic() + SKIP_JOB_S
            return None
        except Exception as exc:
            if is_database_unavailable(exc):
                raise  # not this job's fault: the loop backs off and tries again
            self.log(
                logging.ERROR,
                "join_failed",
                f"cannot load the job here: {type(exc).__name__}: {exc}",
                job.id,
                exc_info=True,
            )
            self._skip[job.id] = time.monotonic() + SKIP_JOB_S
            return None
        if jc is not None:
            self.cache.put(jc)
        return jc

    # ------------------------------------------------------------------ search
    def _deadline_passed(self, job: JobRecord) -> bool:
        return job.deadline_at is not None and self.store.now() >= job.deadline_at

    def _eta(self, job: JobRecord, counts: Counts) -> float | None:
        started: datetime | None = job.search_started_at
        if started is None or counts.done <= 0 or counts.done >= job.trials_total:
            return None
        elapsed = (self.store.now() - started).total_seconds()
        eta = elapsed / counts.done * (job.trials_total - counts.done)
        if job.deadline_at is not None:
            eta = min(eta, max(0.0, (job.deadline_at - self.store.now()).total_seconds()))
        return eta

    def publish_progress(self, job: JobRecord, jc: JobContext) -> tuple[Counts, bool]:
        """Write the study's counts and best trial to the job; returns the counts and whether
        the job is still SEARCHING."""
        counts = count(jc.study)
        compression, accuracy = best_of(jc.study, jc.config.max_accuracy_drop)
        searching = self.store.update_progress(
            job.id,
            trials_done=counts.done,
            trials_running=counts.running,
            best_compression=compression,
            best_accuracy=accuracy,
            eta_s=self._eta(job, counts),
        )
        return counts, searching

    def trial_should_stop(self, job_id: str) -> bool:
        if self.stop_event.is_set():
            return True
        try:
            return self.store.should_stop(job_id)
        except Exception as exc:  # keep training through a database hiccup
            self.log(logging.WARNING, "poll_failed", f"cancel poll failed: {exc}", job_id)
            return False

    def run_trial(self, job: JobRecord) -> bool:
        """Run one trial of the SEARCHING ``job`` if its budget has room; claim the finalize
        phase when the budget is spent and nothing runs. False when nothing was done."""
        jc = self._search_context(job)
        if jc is None:
            return False
        budget = job.trials_total
        try:
            counts = count(jc.study)
        except KeyError:  # the study was deleted: the job is being cancelled
            self.cache.evict(job.id)
            return False
        if counts.done + counts.running >= budget or self._deadline_passed(job):
            counts, searching = self.publish_progress(job, jc)
            if (
                searching
                and counts.running == 0
                and (counts.done >= budget or self._deadline_passed(job))
            ):
                return self.finalize_now(job.id)
            if not searching:
                self.cache.evict(job.id)
            return False
        outcome = self._one_trial(job, jc, budget)
        self._after_trial(job, jc, outcome)
        return True

    def _one_trial(self, job: JobRecord, jc: JobContext, budget: int) -> TrialOutcome:
        return TrialRun(self, job, jc, budget).run()

    def _after_trial(self, job: JobRecord, jc: JobContext, outcome: TrialOutcome) -> None:
        fields: dict[str, Any] = {"trial": outcome.number, "outcome": outcome.kind}
        level = logging.WARNING if outcome.kind in ("failed", "error", "reaped") else logging.INFO
        message = f"trial {outcome.number} {outcome.kind}" + (
            f": {outcome.error}" if outcome.error else ""
        )
        if self.store.should_stop(job.id):  # cancelled, failed or deleted meanwhile
            self.cache.evict(job.id)
            self.log(level, "trial_finished", message + " (the job is stopping)", job.id, **fields)
            return
        trial = frozen_trial(jc, outcome.number)
        if trial is not None:
            fields["state"] = trial.state.name
            if outcome.kind in ("complete", "pruned"):
                fields["compression"] = trial.user_attrs.get("compression")
                fields["accuracy"] = trial.user_attrs.get("accuracy")
            if outcome.kind in ("stopped", "over_budget"):
                requeue_interrupted(jc.study, trial)
        self.log(level, "trial_finished", message, job.id, **fields)
        if outcome.kind == "failed":
            record = self.store.record_trial_failure(
                job.id,
                f"trial {outcome.number}: {outcome.error}",
                max_failures=self.settings.max_trial_failures,
            )
            if record.status is JobStatus.FAILED:
                self.log(logging.ERROR, "job_failed", record.error_message or "", job.id)
                self.cache.evict(job.id)
                return
        counts, searching = self.publish_progress(job, jc)
        if not searching:
            return
        if counts.running == 0 and (counts.done >= job.trials_total or self._deadline_passed(job)):
            self.finalize_now(job.id)

    def finalize_now(self, job_id: str) -> bool:
        """Claim the finalize phase of a SEARCHING job whose budget is spent and run it."""
        if self.stop_event.is_set():
            return False
        claim = self.store.claim_finalize(job_id, self.worker_id)
        if claim is None:
            return False
        self.finalize(claim)
        return True

    # ------------------------------------------------------------------ leased phases
    def handle_claim(self, claim: Claim) -> None:
        """Run a claimed phase."""
        self.log(
            logging.INFO,
            "claimed",
            f"claimed {claim.kind} (attempt {claim.job.attempts})",
            claim.job.id,
            kind=claim.kind,
            attempt=claim.job.attempts,
            phase_errors=claim.job.phase_errors,
            lost_leases=claim.job.lost_leases,
        )
        if claim.kind == "cancel":
            self.cleanup_cancelled(claim.job)
        elif claim.kind == "prepare":
            self.prepare(claim)
        else:
            self.finalize(claim)

    def cleanup_cancelled(self, job: JobRecord) -> None:
        """Forget a cancelled job and delete its Optuna study."""
        cleanup_cancelled(self, job)

    def prepare(self, claim: Claim) -> None:
        """The prepare phase: inputs, baseline, inventory, EVBMF, study with seeds."""
        prepare_phase(self, claim)

    def finalize(self, claim: Claim) -> None:
        """The finalize phase: long fine-tune of the best plans, artifacts, result."""
        finalize_phase(self, claim)
