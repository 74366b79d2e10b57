"""What the trial and the leased phases need of their worker (:class:`worker.pool.Worker`).

A protocol, so that :mod:`worker.pool._trial` and :mod:`worker.pool._phases` do not import
:mod:`worker.pool._worker`, which imports them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from service.settings import Settings
from service.store import JobRecord, Store
from worker.pool._budget import Counts
from worker.pool._context import ContextCache, JobContext
from worker.pool._resilient_storage import ResilientRDBStorage


class WorkerHost(Protocol):
    """The worker running a trial or a leased phase."""

    settings: Settings
    store: Store
    worker_id: str
    stop_event: threading.Event
    cache: ContextCache

    @property
    def storage(self) -> ResilientRDBStorage: ...

    @property
    def aborted(self) -> bool: ...

    def log(
        self, level: int, event: str, message: str, job: str | None = None, **fields: Any
    ) -> None: ...

    def build_context(
        self, job: JobRecord, *, create: bool, check: Callable[[], None] = ...
    ) -> JobContext | None: ...

    def publish_progress(self, job: JobRecord, jc: JobContext) -> tuple[Counts, bool]: ...

    def trial_should_stop(self, job_id: str) -> bool: ...
