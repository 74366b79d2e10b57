"""Fixtures of the store tests: a fresh database per test, on SQLite and PostgreSQL.

For PostgreSQL (the server of ``RANKOPT_TEST_POSTGRES_URL``, see :mod:`tests.postgres_support`)
one scratch database is created per test session (dropped at the end), and every test starts
from an empty ``public`` schema in it. Without a server the PostgreSQL cases are skipped with
the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.settings import Settings
from service.store import ApiKeyRecord, Store, make_engine, upgrade, utcnow
from tests.postgres_support import base_url, reset_schema, scratch_database, skip_reason


class FakeClock:
    """A settable clock for the store: ``clock()`` returns ``now``; ``advance`` moves it.

    Each call also moves time 1 µs forward, so successive timestamps stay distinct and ordered.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or utcnow()

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """URL of a scratch PostgreSQL database for this session, or None when not configured."""
    if base_url() is None:
        yield None
        return
    with scratch_database("rankopt_t") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: object, postgres_url: str | None) -> str:
    """An empty database (no tables) of either backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/db/store.db"
    if postgres_url is None:
        pytest.skip(skip_reason())
    reset_schema(postgres_url)
    return postgres_url


@pytest.fixture
def migrated_url(db_url: str) -> str:
    """A database with the store schema."""
    upgrade(db_url)
    return db_url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(migrated_url: str, clock: FakeClock) -> Iterator[Store]:
    """A store on a fresh database, driven by the fake clock, lease 10 s."""
    s = Store(make_engine(migrated_url), lease_s=10.0, max_attempts=3, clock=clock)
    try:
        yield s
    finally:
        s.dispose()


@pytest.fixture
def other(store: Store) -> ApiKeyRecord:
    return store.create_api_key("mallory")[1]


# ---------------------------------------------------------------------------------------------
# REST API fixtures (tests/service/test_api_*.py, test_client.py): an app on a SQLite file under
# tmp_path, with its own store, artifact root and allowed data root.


@pytest.fixture
def api_settings(tmp_path: Path) -> Settings:
    (tmp_path / "data" / "images").mkdir(parents=True)
    return Settings(
        database_url=f"sqlite:///{tmp_path}/db/api.db",
        artifact_root=tmp_path / "artifacts",
        allowed_data_roots=[tmp_path / "data"],
        allowed_factories=["mypkg.models:build_net"],
        max_upload_bytes=256 * 1024,
    )


@pytest.fixture
def api_store(api_settings: Settings) -> Iterator[Store]:
    s = Store.from_settings(api_settings, migrate=True)
    try:
        yield s
    finally:
        s.dispose()


@pytest.fixture
def api(api_settings: Settings, api_store: Store) -> Iterator[TestClient]:
    """A TestClient of the app (SSE polls every 20 ms)."""
    app = create_app(api_settings, api_store, sse_poll_s=0.02, sse_heartbeat_s=0.05)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def alice(api_store: Store) -> dict[str, str]:
    """Authorization headers of one API key."""
    return {"Authorization": f"Bearer {api_store.create_api_key('alice')[0]}"}


@pytest.fixture
def bob(api_store: Store) -> dict[str, str]:
    """Authorization headers of another API key."""
    return {"Authorization": f"Bearer {api_store.create_api_key('bob')[0]}"}
