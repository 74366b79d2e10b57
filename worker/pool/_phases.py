"""The leased phases of a job: prepare, finalize, and cleaning up a cancelled job.

Prepare and finalize run under a lease (:class:`LeaseKeeper`) inside :func:`leased_phase`,
which holds their one failure path:

* :class:`BadInput`: the job cannot run (its inputs are wrong): it fails with the error's code;
* :class:`PhaseInterrupted` or :class:`LeaseLost`: cancelled (the job is marked so and its
  study deleted), shut down (the lease is given back for another worker), or the lease is
  gone (nothing more is written);
* anything else: the lease is given back with the error, and another attempt follows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from service.store import Claim, JobRecord, JobStatus, LeaseLost
from worker.pool._context import JobContext
from worker.pool._host import WorkerHost
from worker.pool._inputs import BadInput
from worker.pool._lease import LeaseKeeper, PhaseInterrupted
from worker.pool._publish import publish_results
from worker.pool._storage import delete_study_if_exists

__all__ = ["Phase", "cleanup_cancelled", "finalize", "leased_phase", "prepare"]


@dataclass
class Phase:
    """A leased phase in progress: its lease, and whether its body ran to the end."""

    lease: LeaseKeeper
    done: bool = False


@contextmanager
def leased_phase(worker: WorkerHost, job: JobRecord, phase: str) -> Iterator[Phase]:
    """Hold ``worker``'s lease on ``job`` while the body runs ``phase`` (``prepare`` or
    ``finalize``); an error ends the phase by the module's failure path, not raised.

    :attr:`Phase.done` tells the caller afterwards whether the body finished.
    """
    with LeaseKeeper(
        worker.store, job.id, worker.worker_id, worker.settings.heartbeat_seconds
    ) as lease:
        state = Phase(lease)
        try:
            yield state
        except BadInput as exc:
            _fail(worker, job, exc)
            return
        except (PhaseInterrupted, LeaseLost) as exc:
            _interrupted(worker, job, exc, phase)
            return
        except Exception as exc:
            _release(worker, job, phase, exc)
            return
        state.done = True


def prepare(worker: WorkerHost, claim: Claim) -> None:
    """The prepare phase: inputs, baseline, inventory, EVBMF, study with seeds."""
    job = claim.job
    jc: JobContext | None = None
    with leased_phase(worker, job, "prepare") as phase:
        lease = phase.lease
        jc = worker.build_context(
            job, create=True, check=lambda: lease.check(shutdown=worker.aborted)
        )
        assert jc is not None
        lease.check(shutdown=worker.aborted)
        worker.store.finish_prepare(
            job.id, worker.worker_id, jc.ctx.baseline_accuracy, trials_done=0
        )
    if not phase.done or jc is None:
        return
    worker.cache.put(jc)
    worker.log(
        logging.INFO,
        "prepared",
        f"searching: {job.trials_total} trials",
        job.id,
        baseline_accuracy=jc.ctx.baseline_accuracy,
    )


def finalize(worker: WorkerHost, claim: Claim) -> None:
    """The finalize phase: long fine-tune of the best plans, artifacts, result."""
    job = claim.job
    result: dict[str, Any] = {}
    with leased_phase(worker, job, "finalize") as phase:
        lease = phase.lease
        try:

            def check() -> None:
                # Between epochs: a shutdown hands the (long) phase back.
                lease.check(shutdown=worker.stop_event.is_set())

            def before_publish() -> None:
                # The work is done: publish it even when shutting down, unless the
                # lease is gone (LeaseLost) or the job was cancelled.
                lease.beat()
                lease.check()

            jc = worker.cache.get(job.id) or worker.build_context(job, create=False, check=check)
            if jc is None:
                raise BadInput("the job's search results are gone (its study was deleted)")
            jc.ctx.interrupt = check
            try:
                result = publish_results(
                    worker.settings,
                    worker.store,
                    jc,
                    worker.worker_id,
                    before_publish=before_publish,
                )
            finally:
                jc.ctx.interrupt = None
            lease.check()
            worker.store.finish_job(job.id, worker.worker_id, result)
        finally:
            worker.cache.evict(job.id)
    if not phase.done:
        return
    final = result.get("final", {})
    worker.log(
        logging.INFO,
        "job_succeeded",
        f"finalised: accuracy {final.get('accuracy')}, params ratio "
        f"{result.get('ratios', {}).get('params')}",
        job.id,
    )


def cleanup_cancelled(worker: WorkerHost, job: JobRecord) -> None:
    """Forget a cancelled job and delete its Optuna study."""
    worker.cache.evict(job.id)
    try:
        deleted = delete_study_if_exists(worker.storage, job.study_name)
    except Exception as exc:
        worker.log(logging.WARNING, "cleanup_failed", f"could not delete the study: {exc}", job.id)
        return
    worker.log(
        logging.INFO,
        "job_cancelled",
        "cancelled" + ("; study deleted" if deleted else ""),
        job.id,
    )


def _fail(worker: WorkerHost, job: JobRecord, exc: BadInput) -> None:
    worker.log(logging.WARNING, "bad_input", str(exc), job.id)
    worker.cache.evict(job.id)
    try:
        worker.store.fail_job(job.id, worker.worker_id, exc.code, str(exc))
    except LeaseLost as lost:
        worker.log(logging.WARNING, "lease_lost", f"could not fail the job: {lost.detail}", job.id)


def _release(worker: WorkerHost, job: JobRecord, phase: str, exc: BaseException) -> None:
    """Record the phase's error and hand the phase back; when the lease had already gone to
    another worker, the error is a consequence (its takeover may clean this worker's staging
    folder away), not the phase's fault: it is logged as a lost lease and counts nothing."""
    message = f"{phase} failed on worker {worker.worker_id}: {type(exc).__name__}: {exc}"
    worker.cache.evict(job.id)
    try:
        worker.store.release_lease(job.id, worker.worker_id, message)
    except LeaseLost as lost:
        worker.log(
            logging.WARNING,
            "lease_lost",
            f"{lost.detail}; the error that followed is not counted ({type(exc).__name__}: {exc})",
            job.id,
        )
        return
    worker.log(logging.ERROR, f"{phase}_error", message, job.id, exc_info=exc)


def _interrupted(
    worker: WorkerHost, job: JobRecord, exc: PhaseInterrupted | LeaseLost, phase: str
) -> None:
    worker.cache.evict(job.id)
    reason = exc.reason if isinstance(exc, PhaseInterrupted) else "lease_lost"
    if reason == "lease_lost":
        try:  # a write refused because the job moved to CANCELLING under our lease?
            current = worker.store.load_job(job.id)
        except Exception:
            current = None
        if (
            current is not None
            and current.status is JobStatus.CANCELLING
            and current.lease_owner == worker.worker_id
        ):
            reason = "cancelled"
    if reason == "cancelled":
        try:
            worker.store.mark_cancelled(job.id, worker.worker_id)
        except LeaseLost as lost:
            worker.log(logging.WARNING, "lease_lost", lost.detail, job.id)
            return
        cleanup_cancelled(worker, job)
    elif reason == "shutdown":
        message = (
            f"worker {worker.worker_id} shut down during {phase}; another worker takes it over"
        )
        worker.log(logging.INFO, "released", message, job.id)
        try:  # a shutdown is no error of the phase: it counts towards no limit
            worker.store.release_lease(job.id, worker.worker_id, message, raised=False)
        except LeaseLost as lost:
            worker.log(logging.WARNING, "lease_lost", lost.detail, job.id)
    else:
        detail = exc.detail if isinstance(exc, (PhaseInterrupted, LeaseLost)) else str(exc)
        worker.log(
            logging.WARNING,
            "lease_lost",
            f"stopped {phase} without writing anything more: {detail}",
            job.id,
        )
