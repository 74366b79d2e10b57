"""An Optuna RDB storage whose running trials survive a database outage.

Optuna's trial heartbeat is a thread that calls ``storage.record_heartbeat`` every interval and
has no error handling: one ``connection refused`` while the database restarts kills it, the
trial runs on without heartbeats, and once the database is back any process looking for stale
trials fails it *while it still runs* and queues it again (so it runs twice). Three things here
keep a trial alive across an outage:

* **The heartbeat never dies.** :meth:`ResilientRDBStorage.record_heartbeat` retries a failed
  write with back-off for up to one interval, then returns; the heartbeat thread calls again at
  its next tick. It logs once when an outage starts and once when it ends.
* **A stale trial is confirmed before it is reaped.** A trial whose last heartbeat is older
  than the grace period is first only *suspected* by the process that looks; it is reported
  stale (and so failed and retried) only if that same process still sees it stale at least one
  grace period later. A worker that is alive has written a heartbeat by then (it retries about
  every second while the database is down), whereas a dead worker's trial stays stale. Reaping
  a dead worker's trial therefore takes one grace period longer than Optuna alone would.
* **The looker's own outage resets its suspicions.** A process that could not reach the
  database itself cannot tell a dead worker from a live one that was cut off with it: when
  its search for stale trials meets an outage, it forgets its suspects and starts suspecting
  again only one heartbeat interval after the database answers, so that every live worker has
  had a heartbeat tick to reconnect.
* **A trial learns when it was reaped anyway.** After each heartbeat the trial's state is read
  back; a trial that another process failed as stale (a worker starved of CPU for longer than
  the grace period looks dead) is marked :meth:`~ResilientRDBStorage.was_reaped`, and the
  worker abandons it at its next epoch instead of finishing work whose retry is already queued.
* **A trial's own writes wait out an outage.** Intermediate values and trial attributes (which
  a trial writes as it trains) are retried for up to ``outage_patience`` seconds when the
  database is unreachable, instead of failing the trial. These writes are idempotent.

Only errors that :func:`service.store.is_database_unavailable` recognises as outages are waited
out; a real error (a constraint, a bad value) is raised at once as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna

from service.store import is_database_unavailable
from service.store.optuna_tables import trial_state
from worker.structured_logs import log_event

__all__ = ["DEFAULT_OUTAGE_PATIENCE_S", "ResilientRDBStorage"]

logger = logging.getLogger(__name__)

#: How long a trial's own writes wait for the database before the trial gives up.
DEFAULT_OUTAGE_PATIENCE_S = 120.0
#: Longest pause between two tries while the database is unreachable.
_MAX_BACKOFF_S = 1.0

T = TypeVar("T")


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """:class:`optuna.storages.RDBStorage` that rides out database outages (module doc)."""

    def __init__(
        self, *args: Any, outage_patience: float = DEFAULT_OUTAGE_PATIENCE_S, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.outage_patience = float(outage_patience)
        self._lock = threading.Lock()
        self._outage_since: float | None = None
        # study id -> {trial id: monotonic time this process first saw it stale}
        self._suspects: dict[int, dict[int, float]] = {}
        # No new suspects before this monotonic time; None: this process met an outage, and
        # the time is set one heartbeat interval after its next look that succeeds.
        self._suspect_from: float | None = 0.0
        self._reaped: set[int] = set()

    # -- outage bookkeeping --------------------------------------------------------------

    def _outage_began(self, exc: BaseException, what: str) -> None:
        with self._lock:
            if self._outage_since is not None:
                return
            self._outage_since = time.monotonic()
        log_event(
            logger,
            logging.WARNING,
            "database_outage",
            f"the database is unreachable ({type(exc).__name__}); {what} is retried until it "
            "answers",
            error=f"{type(exc).__name__}: {exc}",
        )

    def _outage_ended(self) -> None:
        with self._lock:
            since, self._outage_since = self._outage_since, None
        if since is not None:
            log_event(
                logger,
                logging.INFO,
                "database_recovered",
                f"the database answers again after {time.monotonic() - since:.1f} s",
                outage_s=round(time.monotonic() - since, 1),
            )

    def _patiently(self, what: str, call: Callable[[], T], patience: float) -> T:
        """``call()``, retried with back-off while the database is unreachable, for at most
        ``patience`` seconds; the last outage error is raised after that."""
        deadline = time.monotonic() + patience
        delay = 0.1
        while True:
            try:
                result = call()
            except Exception as exc:
                if not is_database_unavailable(exc) or time.monotonic() + delay > deadline:
                    raise
                self._outage_began(exc, what)
                time.sleep(delay)
                delay = min(2 * delay, _MAX_BACKOFF_S)
                continue
            self._outage_ended()
            return result

    # -- the heartbeat -------------------------------------------------------------------

    def record_heartbeat(self, trial_id: int) -> None:
        """Record the trial's heartbeat; never raises (module doc)."""
        interval = float(self.heartbeat_interval or 1)
        try:
            self._patiently(
                "the trial heartbeat",
                lambda: super(ResilientRDBStorage, self).record_heartbeat(trial_id),
                interval,
            )
            self._check_still_running(trial_id)
        except Exception as exc:  # an outage that lasts, or another error: try at next tick
            if is_database_unavailable(exc):
                self._outage_began(exc, "the trial heartbeat")
            else:
                logger.warning(
                    "recording the heartbeat of trial id %s failed (%s: %s); trying again at "
                    "the next tick",
                    trial_id,
                    type(exc).__name__,
                    exc,
                )

    def _check_still_running(self, trial_id: int) -> None:
        """Mark the trial reaped when its state is no longer RUNNING (module doc)."""
        if trial_id in self._reaped:
            return
        state = trial_state(self.engine, trial_id)
        if state is None or state == "RUNNING":
            return
        with self._lock:
            self._reaped.add(trial_id)
        log_event(
            logger,
            logging.WARNING,
            "trial_abandoned",
            f"trial id {trial_id} is {state} in the study although this worker still runs it "
            "(another process took it for a dead worker's); it is abandoned, its retry is queued",
            trial_id=trial_id,
            state=state,
        )

    def was_reaped(self, trial_id: int) -> bool:
        """True once a heartbeat of this running trial found it failed by another process."""
        with self._lock:
            return trial_id in self._reaped

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Trials seen stale twice by this process, at least one grace period apart, none of
        them before one heartbeat interval after this process's own outage (module doc)."""
        interval = float(self.heartbeat_interval or 1)
        try:
            stale = super()._get_stale_trial_ids(study_id)
        except Exception as exc:
            if is_database_unavailable(exc):
                with self._lock:
                    self._suspects.clear()
                    self._suspect_from = None
            raise
        confirm_after = float(self.grace_period if self.grace_period is not None else 2 * interval)
        now = time.monotonic()
        with self._lock:
            if self._suspect_from is None:
                self._suspect_from = now + interval
            if now < self._suspect_from:
                return []
            seen = self._suspects.setdefault(study_id, {})
            for trial_id in [t for t in seen if t not in stale]:
                del seen[trial_id]  # it sent a heartbeat again, or it ended
            confirmed = []
            for trial_id in stale:
                first = seen.setdefault(trial_id, now)
                if now - first >= confirm_after:
                    confirmed.append(trial_id)
                    del seen[trial_id]
        return confirmed

    # -- a trial's own (idempotent) writes -----------------------------------------------

    def set_trial_state_values(
        self, trial_id: int, state: optuna.trial.TrialState, values: Any = None
    ) -> bool:
        """The trial's end (or its failure by a reaper), waited out like the writes below: a
        finished trial whose end cannot be written would otherwise be reaped and run again."""
        return self._patiently(
            "recording a trial's end",
            lambda: super(ResilientRDBStorage, self).set_trial_state_values(
                trial_id, state, values
            ),
            self.outage_patience,
        )

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        self._patiently(
            "recording an intermediate value",
            lambda: super(ResilientRDBStorage, self).set_trial_intermediate_value(
                trial_id, step, intermediate_value
            ),
            self.outage_patience,
        )

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._patiently(
            "recording a trial attribute",
            lambda: super(ResilientRDBStorage, self).set_trial_user_attr(trial_id, key, value),
            self.outage_patience,
        )

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._patiently(
            "recording a trial attribute",
            lambda: super(ResilientRDBStorage, self).set_trial_system_attr(trial_id, key, value),
            self.outage_patience,
        )
