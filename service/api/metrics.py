"""Prometheus metrics in the text exposition format 0.0.4, written by hand.

* ``rankopt_jobs{status}`` (gauge): jobs in each status, zeros included;
* ``rankopt_trials_total`` (gauge): finished trials summed over the jobs in the store;
* ``rankopt_store_up`` (gauge): 1 when the database answered the scrape's queries;
* ``rankopt_http_requests_total{method,route,status}`` (counter);
* ``rankopt_http_request_duration_seconds{method,route}`` (histogram).

``route`` is the route's path template (``/v1/jobs/{job_id}``), or ``unmatched`` for requests
no route answered, so labels stay few whatever paths clients send.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from service.store import Store

__all__ = ["BUCKETS", "CONTENT_TYPE", "Metrics", "MetricsMiddleware"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)  # per bucket, not cumulative
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(BUCKETS, value)
        if index < len(BUCKETS):
            self.counts[index] += 1
        self.total += 1
        self.sum += value


class Metrics:
    """Request counters and duration histograms of one app; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._durations: dict[tuple[str, str], _Histogram] = defaultdict(_Histogram)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        with self._lock:
            self._requests[(method, route, str(status))] += 1
            self._durations[(method, route)].observe(seconds)

    def render(self, store: Store | None) -> str:
        """The exposition text; job gauges are read from ``store`` (skipped when it fails)."""
        lines: list[str] = []
        counts: dict[str, int] | None = None
        trials = 0
        if store is not None:
            try:
                counts = store.count_jobs_by_status()
                trials = store.count_trials_done()
            except SQLAlchemyError as exc:
                logger.warning("metrics: cannot read job counts: %s", exc)
                counts = None
        lines += [
            "# HELP rankopt_store_up 1 when the job database answered this scrape.",
            "# TYPE rankopt_store_up gauge",
            f"rankopt_store_up {1 if counts is not None else 0}",
        ]
        if counts is not None:
            lines += ["# HELP rankopt_jobs Jobs in each status.", "# TYPE rankopt_jobs gauge"]
            lines += [f"rankopt_jobs{_labels(status=s)} {n}" for s, n in sorted(counts.items())]
            lines += [
                "# HELP rankopt_trials_total Finished trials summed over the stored jobs.",
                "# TYPE rankopt_trials_total gauge",
                f"rankopt_trials_total {trials}",
            ]
        with self._lock:
            requests = sorted(self._requests.items())
            durations = sorted(
                (key, list(h.counts), h.total, h.sum) for key, h in self._durations.items()
            )
        lines += [
            "# HELP rankopt_http_requests_total HTTP requests answered, by route and status.",
            "# TYPE rankopt_http_requests_total counter",
        ]
        for (method, route, status), count in requests:
            labels = _labels(method=method, route=route, status=status)
            lines.append(f"rankopt_http_requests_total{labels} {count}")
        lines += [
            "# HELP rankopt_http_request_duration_seconds Time to answer HTTP requests.",
            "# TYPE rankopt_http_request_duration_seconds histogram",
        ]
        name = "rankopt_http_request_duration_seconds"
        for (method, route), bucket_counts, total, seconds in durations:
            cumulative = 0
            for bound, count in zip(BUCKETS, bucket_counts):
                cumulative += count
                labels = _labels(method=method, route=route, le=_number(bound))
                lines.append(f"{name}_bucket{labels} {cumulative}")
            labels = _labels(method=method, route=route, le="+Inf")
            lines.append(f"{name}_bucket{labels} {total}")
            lines.append(f"{name}_sum{_labels(method=method, route=route)} {seconds!r}")
            lines.append(f"{name}_count{_labels(method=method, route=route)} {total}")
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """ASGI middleware counting requests by route template and status (streams included)."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], Metrics]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics().observe(
                scope.get("method", "GET"), template, status["code"], time.perf_counter() - started
            )
