"""Count a process's PostgreSQL round-trips and the time spent in them, by purpose.

``install()`` wraps psycopg 3 at the DB-API level, under SQLAlchemy and Optuna, so that every
exchange with the server is seen, pool pre-pings and the implicit ``BEGIN`` included:

* ``Cursor.execute``: one round-trip, plus one for the ``BEGIN`` psycopg sends first when the
  connection is idle outside autocommit; ``Cursor.executemany`` is counted the same way (psycopg
  pipelines its statements: one exchange, approximately);
* ``Connection.commit`` / ``rollback``: one round-trip when a transaction is open (a
  transaction; so is every statement run in autocommit mode);
* ``Connection.connect``: one new connection (its start-up exchanges are timed, not counted).

Each call is attributed to a purpose by the code that made it (the call stack): the trial
heartbeat (one beat when a trial starts, then one every interval), Optuna's stale-trial check
(when a trial starts), the lease heartbeat, the reaper, claiming work, publishing progress,
the prepare and finalize phases, and the study (Optuna ask/tell, reading trials for the
budget).

Run as a script it is a traced ``rankopt`` (``python bench/_dbtrace.py worker ...``): the
counts, the process's CPU time and its wall time, with a snapshot of them every 0.5 s, are
written at exit to ``$RANKOPT_BENCH_DBTRACE_DIR/<pid>.json``.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["CATEGORIES", "Trace", "install"]

# (purpose, substrings of a frame's "file:function" that mark it), first match wins
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reaper", ("worker/pool/_reaper.py:",)),
    ("lease heartbeat", ("worker/pool/_lease.py:",)),
    ("trial heartbeat", (":record_heartbeat", ":_record_heartbeat")),
    ("stale-trial check", (":fail_stale_trials",)),
    ("prepare/finalize", ("worker/pool/_worker.py:prepare", "worker/pool/_worker.py:finalize")),
    (
        "claim",
        ("service/store/jobs.py:claim", "service/store/jobs.py:next_search_job"),
    ),
    (
        "progress",
        (
            "worker/pool/_worker.py:publish_progress",
            "service/store/jobs.py:should_stop",
            "service/store/jobs.py:record_trial_failure",
            "worker/pool/_worker.py:_trial_should_stop",
        ),
    ),
    ("study ask/tell", ("/optuna/",)),
)
CATEGORIES = (*[name for name, _ in _RULES], "other")


def _purpose(frame: FrameType | None) -> str:
    marks: list[str] = []
    while frame is not None:
        code = frame.f_code
        marks.append(f"{code.co_filename}:{code.co_name}")
        frame = frame.f_back
    for name, needles in _RULES:
        if any(needle in mark for mark in marks for needle in needles):
            return name
    return "other"


class Trace:
    """Round-trips and seconds by purpose, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.round_trips: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.transactions = 0
        self.connects = 0
        self.connect_s = 0.0

    def add(self, purpose: str, trips: int, seconds: float) -> None:
        with self.lock:
            self.round_trips[purpose] += trips
            self.seconds[purpose] += seconds

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "round_trips": dict(self.round_trips),
                "seconds": dict(self.seconds),
                "transactions": self.transactions,
                "connects": self.connects,
                "connect_s": self.connect_s,
            }


def install() -> Trace:
    """Wrap psycopg's cursor, commit, rollback and connect; the trace they write to."""
    import psycopg
    from psycopg import pq

    trace = Trace()
    idle = pq.TransactionStatus.IDLE

    def wrap_execute(original: Any) -> Any:
        def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
            conn = self.connection
            begins = int(not conn.autocommit and conn.info.transaction_status == idle)
            if conn.autocommit:  # each statement is its own transaction on the server
                with trace.lock:
                    trace.transactions += 1
            start = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                trace.add(_purpose(sys._getframe(1)), 1 + begins, time.perf_counter() - start)

        return execute

    def wrap_end(original: Any) -> Any:
        def end(self: Any) -> Any:
            open_tx = self.info.transaction_status != idle
            start = time.perf_counter()
            try:
                return original(self)
            finally:
                if open_tx:
                    trace.add(_purpose(sys._getframe(1)), 1, time.perf_counter() - start)
                    with trace.lock:
                        trace.transactions += 1

        return end

    original_connect = psycopg.connect  # what SQLAlchemy's dialect calls

    def connect(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original_connect(*args, **kwargs)
        finally:
            with trace.lock:
                trace.connects += 1
                trace.connect_s += time.perf_counter() - start

    psycopg.Cursor.execute = wrap_execute(psycopg.Cursor.execute)  # type: ignore[method-assign]
    psycopg.Cursor.executemany = wrap_execute(psycopg.Cursor.executemany)  # type: ignore[method-assign]
    psycopg.Connection.commit = wrap_end(psycopg.Connection.commit)  # type: ignore[method-assign]
    psycopg.Connection.rollback = wrap_end(psycopg.Connection.rollback)  # type: ignore[method-assign]
    psycopg.connect = connect  # type: ignore[assignment]
    return trace


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime


def _main() -> int:
    trace = install()
    started = time.monotonic()
    folder = Path(os.environ["RANKOPT_BENCH_DBTRACE_DIR"])
    # cumulative snapshots (wall-clock time, CPU seconds, counts) every half second, so that
    # the benchmark can take the difference over the search phase alone
    history: list[dict[str, Any]] = []

    def snapshot() -> None:
        history.append({"t": time.time(), "cpu_s": _cpu_s(), **trace.as_dict()})

    def sample() -> None:
        while True:
            snapshot()
            time.sleep(0.5)

    def dump() -> None:
        snapshot()
        out = {
            **history[-1],
            "pid": os.getpid(),
            "wall_s": time.monotonic() - started,
            "history": history,
        }
        (folder / f"{os.getpid()}.json").write_text(json.dumps(out) + "\n")

    threading.Thread(target=sample, name="dbtrace-sampler", daemon=True).start()
    atexit.register(dump)
    from worker.cli import main

    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_main())
