"""``/healthz`` (liveness), ``/readyz`` (the database answers) and ``/metrics``; no key."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from service.api.deps import State
from service.api.errors import error_response
from service.api.metrics import CONTENT_TYPE
from service.api.schemas import ErrorBody, HealthOut
from service.store import Store

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


def _store_or_none(state: State) -> Store | None:
    try:
        return state.store
    except Exception as exc:  # the database cannot even be opened or migrated
        logger.warning("store unavailable: %s", exc)
        return None


@router.get("/healthz", response_model=HealthOut, summary="Liveness")
def healthz() -> HealthOut:
    """200 whenever the process serves requests."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=HealthOut,
    summary="Readiness: the database answers",
    responses={503: {"model": ErrorBody, "description": "the database is unreachable"}},
)
def readyz(state: State) -> HealthOut | JSONResponse:
    """200 when the job database answers a query, else 503."""
    store = _store_or_none(state)
    if store is None or not store.ping():
        return error_response(503, "not_ready", "the job database is not reachable")
    return HealthOut(status="ready")


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics",
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
def metrics(state: State) -> PlainTextResponse:
    """Jobs by status, trials done, HTTP requests and their durations (text format 0.0.4)."""
    return PlainTextResponse(state.metrics.render(_store_or_none(state)), media_type=CONTENT_TYPE)
