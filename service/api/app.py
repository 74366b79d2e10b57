"""The FastAPI application of the rankopt service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service.api import routes_artifacts, routes_dashboard, routes_health, routes_jobs
from service.api.deps import ApiState
from service.api.errors import install_error_handlers
from service.api.metrics import MetricsMiddleware
from service.settings import Settings
from service.store import Store, is_database_unavailable
from service.web import page_router

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Compress trained PyTorch CNNs by tensor decomposition, with the per-layer method and rank
found by Bayesian optimisation. Submit a job (spec + weights), follow its progress, download
the compressed checkpoint. Every `/v1` route needs `Authorization: Bearer <key>`; errors are
JSON `{"code", "message"}`.
"""


def _version() -> str:
    try:
        return version("rankopt")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(
    settings: Settings | None = None,
    store: Store | None = None,
    *,
    sse_poll_s: float = 0.5,
    sse_heartbeat_s: float = 15.0,
) -> FastAPI:
    """Build the app.

    Args:
        settings: configuration; read from ``RANKOPT_*`` variables when omitted.
        store: the job store; when omitted the app opens one from ``settings`` at start-up
            (running the migrations) and closes it at shutdown.
        sse_poll_s: how often the events stream polls the store.
        sse_heartbeat_s: quiet time after which the events stream sends a heartbeat comment.
    """
    state = ApiState(
        settings if settings is not None else Settings(),
        store,
        sse_poll_s=sse_poll_s,
        sse_heartbeat_s=sse_heartbeat_s,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:  # open and migrate now: a bad URL or schema fails fast
            await run_in_threadpool(lambda: state.store)
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            # The database is down or still starting: serve anyway (503 database_unavailable,
            # /readyz 503); the store is opened and migrated on the first request that finds
            # the database back.
            logger.warning(
                "the job database is not reachable yet (%s); serving 503 until it is", exc
            )
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="rankopt",
        version=_version(),
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.api = state
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=lambda: state.metrics)
    app.include_router(routes_jobs.router)
    app.include_router(routes_artifacts.router)
    app.include_router(routes_health.router)
    app.include_router(routes_dashboard.router)
    app.include_router(page_router(state.settings))  # the page at / (static files, no build)
    return app
