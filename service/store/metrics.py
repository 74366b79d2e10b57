"""Counts for ``/metrics`` and the database ping of ``/readyz``."""

from __future__ import annotations

import logging

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from service.store._base import StoreBase, jobs_table
from service.store.models import JobStatus

__all__ = ["MetricsStore"]

logger = logging.getLogger(__name__)

_jobs = jobs_table


class MetricsStore(StoreBase):
    """Health and metrics reads."""

    def count_jobs_by_status(self) -> dict[str, int]:
        """Number of jobs in every status (zeros included), for ``/metrics``."""
        counts = {status.value: 0 for status in JobStatus}
        with self._read() as conn:
            rows = conn.execute(select(_jobs.c.status, func.count()).group_by(_jobs.c.status))
            for status, count in rows:
                counts[str(status)] = int(count)
        return counts

    def count_trials_done(self) -> int:
        """Finished trials summed over every job (``trials_done``), for ``/metrics``."""
        with self._read() as conn:
            total = conn.execute(select(func.coalesce(func.sum(_jobs.c.trials_done), 0))).scalar()
        return int(total or 0)

    def ping(self) -> bool:
        """True when the database answers (for ``/readyz``); never raises."""
        try:
            with self._read() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            logger.warning("store ping failed: %s", exc)
            return False
        return True
