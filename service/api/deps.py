"""Dependencies of the routes: the app's state, the caller's API key, the caller's job."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import ApiError
from service.api.metrics import Metrics
from service.artifacts import ArtifactStore, artifact_store
from service.settings import Settings
from service.store import ApiKeyRecord, JobRecord, Store

__all__ = ["ApiState", "CurrentKey", "OwnedJob", "State", "current_key", "get_state", "owned_job"]


class ApiState:
    """Everything the routes share: settings, the store (opened lazily), the artifact store,
    metrics, SSE pacing."""

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        *,
        sse_poll_s: float = 0.5,
        sse_heartbeat_s: float = 15.0,
    ) -> None:
        self.settings = settings
        self.artifacts: ArtifactStore = artifact_store(settings)
        self.metrics = Metrics()
        self.sse_poll_s = sse_poll_s
        self.sse_heartbeat_s = sse_heartbeat_s
        self._store = store
        self._owns_store = False
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        """The store; opened (and migrated) on first use when the app was given none."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = Store.from_settings(self.settings, migrate=True)
                    self._owns_store = True
        return self._store

    def close(self) -> None:
        """Dispose of the store's connections if the app opened it."""
        if self._owns_store and self._store is not None:
            self._store.dispose()
            self._store = None
            self._owns_store = False


def get_state(request: Request) -> ApiState:
    """The :class:`ApiState` of the app serving ``request``."""
    state: ApiState = request.app.state.api
    return state


State = Annotated[ApiState, Depends(get_state)]

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key created with `rankopt keys create --name NAME`.",
)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def current_key(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKeyRecord:
    """The active API key of the request's ``Authorization: Bearer <key>`` (else 401)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("send an API key as 'Authorization: Bearer <key>'")
    record = state.store.authenticate(credentials.credentials)
    if record is None:
        raise _unauthorized("the API key is unknown or was revoked")
    return record


CurrentKey = Annotated[ApiKeyRecord, Depends(current_key)]


def owned_job(job_id: str, key: CurrentKey, state: State) -> JobRecord:
    """The caller's job ``job_id`` (another caller's job is a 404 like a missing one)."""
    return state.store.get_job(job_id, key.id)


OwnedJob = Annotated[JobRecord, Depends(owned_job)]
