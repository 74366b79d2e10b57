"""Process entry point of the claim-race fault test (imported by ``spawn`` children: no torch).

Each racer plays a worker that does nothing but the single-worker phases: it claims, and for a
``prepare`` claim records it, ends the phase (``finish_prepare``) and at once reports the search
budget spent (so that a later claim moves the job to FINALIZING); for a ``finalize`` claim it
records it and ends the job (``finish_job``). It stops when every job of the database is
SUCCEEDED (or at its deadline) and reports what it did through ``results``.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select

from service.store import JobStatus, Store, make_engine
from service.store.models import Job


def _succeeded(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(Job).where(Job.status == JobStatus.SUCCEEDED.value)
            ).scalar_one()
        )


def race(
    url: str, worker_id: str, jobs: int, barrier: Any, results: Any, deadline_s: float
) -> None:
    """Claim and finish phases until ``jobs`` jobs are SUCCEEDED; put ``(worker_id, events,
    error)`` on ``results``, ``events`` being ``(job_id, kind, attempts)`` tuples in order."""
    events: list[tuple[str, str, int]] = []
    error: str | None = None
    store = Store(make_engine(url), lease_s=300.0)
    try:
        barrier.wait(timeout=60)
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            claim = store.claim(worker_id)
            if claim is None:
                if _succeeded(store) >= jobs:
                    break
                time.sleep(0.005)
                continue
            job = claim.job
            events.append((job.id, claim.kind, job.attempts))
            if claim.kind == "prepare":
                store.finish_prepare(job.id, worker_id, 0.9)
                store.update_progress(job.id, trials_done=job.trials_total, trials_running=0)
            elif claim.kind == "finalize":
                store.finish_job(job.id, worker_id, {"finalized_by": worker_id})
            else:
                raise AssertionError(f"unexpected {claim.kind} claim of job {job.id}")
        else:
            error = f"deadline of {deadline_s}s passed"
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        store.dispose()
        results.put((worker_id, events, error))
