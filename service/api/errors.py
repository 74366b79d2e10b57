"""Errors of the REST API: every failure is a JSON body ``{"code": ..., "message": ...}``.

Routes raise :class:`ApiError` (or let a store error with a stable ``code`` through); the
handlers installed by :func:`install_error_handlers` turn those, FastAPI's request validation
errors and Starlette's HTTP errors (unknown route, wrong method) into the same shape.

While the database cannot be reached (down, restarting, no free connection) every route that
needs it answers 503 ``database_unavailable`` with ``Retry-After``; nothing needs restarting:
the engine's pre-ping replaces dead connections once the database is back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.store import (
    ArtifactNotFound,
    IdempotencyConflict,
    InvalidArtifactName,
    InvalidCursor,
    JobNotFinished,
    JobNotFound,
    StoreError,
    is_database_unavailable,
)

__all__ = ["RETRY_AFTER_S", "ApiError", "error_response", "install_error_handlers"]

logger = logging.getLogger(__name__)

#: ``Retry-After`` (seconds) of a 503 ``database_unavailable`` answer.
RETRY_AFTER_S = 5

#: HTTP status of each store error; anything else is a 500.
_STORE_STATUS: dict[type[StoreError], int] = {
    JobNotFound: 404,
    ArtifactNotFound: 404,
    InvalidArtifactName: 404,
    JobNotFinished: 409,
    IdempotencyConflict: 422,
    InvalidCursor: 422,
}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "upload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answered as ``status`` with body ``{"code": code, "message": message}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The JSON error response every failure of the API uses."""
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", ""))
    return "; ".join(parts) or "invalid request"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


def _database_unavailable(request: Request, exc: BaseException) -> JSONResponse:
    logger.warning(
        "database unavailable on %s %s: %s: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
        str(exc).splitlines()[0] if str(exc) else "",
    )
    return error_response(
        503,
        "database_unavailable",
        "the job database is not reachable right now; retry in a few seconds",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if is_database_unavailable(exc):
        return _database_unavailable(request, exc)
    raise exc  # a bug, not an outage: the catch-all 500 handler logs it


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreError)
    if is_database_unavailable(exc):  # e.g. opening the store failed: the server is down
        return _database_unavailable(request, exc)
    for kind, status in _STORE_STATUS.items():
        if isinstance(exc, kind):
            code = exc.code
            message = str(exc)
            if isinstance(exc, InvalidArtifactName):
                code = "artifact_not_found"
            return error_response(status, code, message)
    logger.error("store error on %s %s: %s", request.method, request.url.path, exc)
    return error_response(500, exc.code, "the job store failed; retry later")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "validation_error", _validation_message(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _HTTP_CODES.get(status, f"http_{status}")
    if status == 404 and exc.detail == "Not Found":
        message = f"no route {request.method} {request.url.path}; see /docs for the API"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(status, code, message, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error; the log has details")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as ``{"code", "message"}`` JSON."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeoutError, _database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
