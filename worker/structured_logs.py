"""Structured logs of the worker pool: one JSON object a line (``--log-format json``) or text.

Every record carries ``worker``, ``job`` and ``event`` (records from other libraries get the
process's worker id, no job, and the event ``log``); :func:`log_event` attaches further fields.
A JSON line looks like::

    {"ts": "2024-05-01T12:00:00.123+00:00", "level": "info", "worker": "host-12-0",
     "job": "3f…", "event": "trial_finished", "message": "…", "trial": 4, "state": "COMPLETE"}
"""

from __future__ import annotations

import json
import logging
import math
import sys
from datetime import datetime, timezone
from typing import Any, Literal

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure_logging", "log_event"]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = ("text", "json")

_RESERVED = ("worker", "job", "event", "fields")


def log_event(
    logger: logging.Logger,
    level: int,
    event: str,
    message: str,
    *,
    worker: str | None = None,
    job: str | None = None,
    exc_info: bool | BaseException = False,
    **fields: Any,
) -> None:
    """Log ``message`` as the structured event ``event`` with ``fields`` (``exc_info``: True for
    the exception being handled, or the exception itself)."""
    logger.log(
        level,
        message,
        extra={"worker": worker, "job": job, "event": event, "fields": fields},
        exc_info=exc_info,
    )


class _Defaults(logging.Filter):
    """Give every record the structured attributes, defaulting the worker to the process's."""

    def __init__(self, worker: str | None) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "worker", None) is None:
            record.worker = self.worker
        if not hasattr(record, "job"):
            record.job = None
        if getattr(record, "event", None) is None:
            record.event = "log"
        if not isinstance(getattr(record, "fields", None), dict):
            record.fields = {}
        return True


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, worker, job, event, message, logger, fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "worker": getattr(record, "worker", None),
            "job": getattr(record, "job", None),
            "event": getattr(record, "event", None) or "log",
            "message": record.getMessage(),
            "logger": record.name,
        }
        for key, value in (getattr(record, "fields", None) or {}).items():
            if key not in data:
                data[key] = _plain(value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    """``time level [worker] job event: message key=value …``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        head = f"[{getattr(record, 'worker', None) or '-'}]"
        job = getattr(record, "job", None)
        if job:
            head += f" job={job}"
        event = getattr(record, "event", None)
        if event and event != "log":
            head += f" {event}:"
        else:
            head += f" {record.name}:"
        fields = getattr(record, "fields", None) or {}
        tail = "".join(f" {k}={v}" for k, v in fields.items() if v is not None)
        saved = record.msg, record.args
        record.msg, record.args = f"{head} {record.getMessage()}{tail}", None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = saved


class _QuietStops(logging.Filter):
    """Drop Optuna's "trial failed" warnings for trials stopped on purpose (and its redundant
    "failed with value None" line, which follows the warning that has the traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from worker.search import SearchStopped

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, SearchStopped):
            return False
        return not record.getMessage().endswith("failed with value None.")


_QUIET = _QuietStops()


def quiet_optuna(*, handlers: bool = True) -> None:
    """Drop Optuna's warnings about trials stopped on purpose; with ``handlers``, also route
    Optuna's logs through the root logger's handlers at WARNING."""
    import optuna

    if handlers:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
    optimize_logger = logging.getLogger("optuna.study._optimize")
    if _QUIET not in optimize_logger.filters:
        optimize_logger.addFilter(_QUIET)
    study_logger = logging.getLogger("optuna.study.study")
    if _QUIET not in study_logger.filters:
        study_logger.addFilter(_QUIET)


def configure_logging(
    log_format: str = "text", *, worker: str | None = None, level: int = logging.INFO
) -> None:
    """Send every log record to stderr in ``log_format`` (``text`` or ``json``)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_Defaults(worker))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))
    quiet_optuna()
