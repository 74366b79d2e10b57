"""Keeping a prepare/finalize lease alive from a background thread while the phase runs."""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Literal

from service.store import LeaseLost, Store
from worker.structured_logs import log_event

__all__ = ["LeaseKeeper", "PhaseInterrupted"]

logger = logging.getLogger(__name__)

Reason = Literal["lease_lost", "cancelled", "shutdown"]


class PhaseInterrupted(Exception):
    """A leased phase must stop now: the lease is gone, the job was cancelled, or the worker
    is shutting down."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


class LeaseKeeper:
    """Renews ``worker_id``'s lease on a job every ``interval`` seconds until closed.

    The phase calls :meth:`check` at safe points (between steps, after every epoch); it raises
    :class:`PhaseInterrupted` once the heartbeat saw the lease lost or a cancel requested.
    A heartbeat that fails for another reason (the database blinked) is retried at the next
    tick: the lease outlives a few missed heartbeats, and a lost one shows up as LeaseLost.
    """

    def __init__(self, store: Store, job_id: str, worker_id: str, interval: float) -> None:
        self.store = store
        self.job_id = job_id
        self.worker_id = worker_id
        self.interval = interval
        self.lost = threading.Event()
        self.cancelled = threading.Event()
        self.lost_detail = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id[:8]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, 2 * self.interval))

    def beat(self) -> None:
        """Renew the lease now (raises LeaseLost); records a cancel request."""
        try:
            if self.store.heartbeat(self.job_id, self.worker_id):
                self.cancelled.set()
        except LeaseLost as exc:
            self.lost_detail = exc.detail
            self.lost.set()
            raise

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except LeaseLost as exc:
                log_event(
                    logger,
                    logging.WARNING,
                    "lease_lost",
                    f"lost the lease: {exc.detail}",
                    worker=self.worker_id,
                    job=self.job_id,
                )
                return
            except Exception as exc:  # a transient database error: try again next tick
                log_event(
                    logger,
                    logging.WARNING,
                    "heartbeat_failed",
                    f"lease heartbeat failed ({type(exc).__name__}: {exc}); retrying",
                    worker=self.worker_id,
                    job=self.job_id,
                )

    def check(self, *, shutdown: bool = False) -> None:
        """Raise :class:`PhaseInterrupted` when the phase must stop (``shutdown``: the worker
        is shutting down and the phase should give its work back)."""
        if self.lost.is_set():
            raise PhaseInterrupted("lease_lost", self.lost_detail or "the lease was lost")
        if self.cancelled.is_set():
            raise PhaseInterrupted("cancelled", "the job was cancelled")
        if shutdown:
            raise PhaseInterrupted("shutdown", "the worker is shutting down")
