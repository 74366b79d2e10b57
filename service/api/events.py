"""Server-sent events of a job's progress.

The stream polls the store and sends ``event: progress`` with the job's JSON whenever it
changes (first at once), a ``: heartbeat`` comment line when nothing was sent for a while (so
proxies keep the connection open), and, once the job is SUCCEEDED, CANCELLED or FAILED, its
last ``progress`` and ``event: end`` with the same final JSON, then closes. A job deleted
meanwhile ends the stream with ``event: error`` (``{"code": "job_not_found", ...}``). While the
database is unreachable the stream stays open (heartbeats only) and resumes when it is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool

from service.api.schemas import job_out
from service.store import JobNotFound, JobRecord, Store, is_database_unavailable

__all__ = ["format_event", "job_events"]


def format_event(event: str, data: Any, event_id: int | None = None) -> str:
    """One SSE message: ``event:``, optional ``id:``, one ``data:`` line of JSON."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


async def job_events(
    store: Store,
    job: JobRecord,
    *,
    poll_s: float,
    heartbeat_s: float,
) -> AsyncIterator[str]:
    """The SSE stream of ``job`` (already checked to be the caller's)."""
    counter = 0
    last: str | None = None
    last_sent = time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        payload = job_out(job).model_dump(mode="json")
        text = json.dumps(payload, sort_keys=True)
        if text != last:
            counter += 1
            last = text
            last_sent = time.monotonic()
            yield format_event("progress", payload, counter)
        if job.terminal:
            counter += 1
            yield format_event("end", payload, counter)
            return
        if time.monotonic() - last_sent >= heartbeat_s:
            last_sent = time.monotonic()
            yield ": heartbeat\n\n"
        # A client that goes away cancels this generator (Starlette's StreamingResponse).
        await anyio.sleep(poll_s)
        try:
            job = await run_in_threadpool(store.get_job, job.id, job.owner_id)
        except JobNotFound as exc:
            yield format_event("error", {"code": exc.code, "message": str(exc)})
            return
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            continue  # the database is restarting: keep the stream open, poll again
