"""Database outages: pool settings, telling an outage from a bug, connections the server dropped
(pre-ping replaces them), and the API's 503 ``database_unavailable`` while the database is
down, recovering on its own once it is back.

The PostgreSQL cases make the database unreachable without restarting the server (which the
fault-injection tests do): they terminate its connections and refuse new ones with
``ALTER DATABASE ... ALLOW_CONNECTIONS false``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import NullPool

from service.api import create_app
from service.settings import Settings
from service.store import (
    MigrationError,
    Store,
    is_database_unavailable,
    make_engine,
    upgrade,
)
from service.store.engine import describe_outage, outage_cause
from tests.postgres_support import conninfo, require_postgres, scratch_database

CLOSED = "postgresql://nobody@127.0.0.1:1/none"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the test (skipped with the reason when none)."""
    require_postgres()
    with scratch_database("rankopt_rc") as url:
        yield url


def _admin(url: str) -> psycopg.Connection:
    """An autocommit connection to the server's maintenance database."""
    return psycopg.connect(
        conninfo(make_url(url).set(database="postgres").render_as_string(hide_password=False)),
        autocommit=True,
    )


def _terminate(url: str) -> int:
    """Kill every connection to the database of ``url``; how many there were."""
    with _admin(url) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (make_url(url).database,),
        ).fetchall()
    return len(rows)


def _allow_connections(url: str, allow: bool) -> None:
    name = make_url(url).database
    with _admin(url) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
    if not allow:
        _terminate(url)


# ------------------------------------------------------------------ configuration


def test_pool_settings_reach_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKOPT_DB_POOL_SIZE", "3")
    monkeypatch.setenv("RANKOPT_DB_MAX_OVERFLOW", "7")
    monkeypatch.setenv("RANKOPT_DB_POOL_RECYCLE_SECONDS", "120")
    settings = Settings(database_url="postgresql://u@127.0.0.1:1/x")
    assert (settings.db_pool_size, settings.db_max_overflow) == (3, 7)
    engine = make_engine(settings.database_url, **settings.engine_options)
    try:
        pool = engine.pool
        assert pool.size() == 3  # type: ignore[attr-defined]
        assert pool._max_overflow == 7  # type: ignore[attr-defined]
        assert pool._pre_ping is True and pool._recycle == 120
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()

    for name in ("RANKOPT_DB_POOL_SIZE", "RANKOPT_DB_MAX_OVERFLOW"):
        monkeypatch.delenv(name)
    defaults = Settings()
    assert (defaults.db_pool_size, defaults.db_max_overflow) == (5, 10)
    engine = make_engine(CLOSED)
    assert engine.pool.size() == 5 and engine.pool._max_overflow == 10  # type: ignore[attr-defined]
    engine.dispose()
    # a caller's own pool class wins (no size arguments), and its connect_args are merged
    engine = make_engine(CLOSED, poolclass=NullPool, connect_args={"application_name": "t"})
    assert isinstance(engine.pool, NullPool)
    engine.dispose()
    with pytest.raises(ValueError, match="pool_size"):
        make_engine(CLOSED, pool_size=0)
    for bad in ({"db_pool_size": 0}, {"db_max_overflow": -1}):
        with pytest.raises(ValueError):
            Settings(**bad)  # type: ignore[arg-type]


def test_outages_are_told_from_bugs(tmp_path: Path) -> None:
    closed = make_engine(CLOSED)
    with pytest.raises(OperationalError) as refused:
        closed.connect()
    closed.dispose()
    assert is_database_unavailable(refused.value)
    wrapped = MigrationError("migrating failed")
    wrapped.__cause__ = refused.value
    assert is_database_unavailable(wrapped)
    assert is_database_unavailable(PoolTimeoutError("QueuePool limit reached"))

    engine = create_engine(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(OperationalError) as missing, engine.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert not is_database_unavailable(missing.value)  # a bug, not an outage
    locked = OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked"))
    assert is_database_unavailable(locked)
    duplicate = IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert not is_database_unavailable(duplicate)
    assert not is_database_unavailable(ValueError("x"))
    engine.dispose()


def test_an_outage_is_described_in_the_drivers_words() -> None:
    refused = OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused\nmore"))
    wrapped = RuntimeError("invalid data in the commit, e.g. exceeding max length")
    wrapped.__cause__ = refused
    assert outage_cause(wrapped) is refused
    assert describe_outage(wrapped) == (
        "the database is unreachable (ConnectionRefusedError: connection refused)"
    )
    assert describe_outage(PoolTimeoutError("QueuePool limit reached")) == (
        "the database is unreachable (TimeoutError: QueuePool limit reached)"
    )
    duplicate = IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert describe_outage(duplicate) is None and outage_cause(ValueError("x")) is None


# ------------------------------------------------------------------ dropped connections


def test_store_survives_connections_the_server_dropped(pg_url: str) -> None:
    upgrade(pg_url)
    store = Store(make_engine(pg_url))
    try:
        store.create_api_key("before")
        assert store.engine.pool.checkedin() >= 1  # type: ignore[attr-defined]
        assert _terminate(pg_url) >= 1
        # pre-ping notices the dead pooled connection and opens a new one
        assert [k.name for k in store.list_api_keys()] == ["before"]
        store.create_api_key("after")
        assert store.ping()
    finally:
        store.dispose()

    # Without pre-ping the first use of a dead connection fails (so the test above means
    # something), and the pool then recovers by itself.
    bare = Store(make_engine(pg_url, pool_pre_ping=False))
    try:
        assert len(bare.list_api_keys()) == 2
        assert _terminate(pg_url) >= 1
        with pytest.raises(OperationalError) as dropped:
            bare.list_api_keys()
        assert is_database_unavailable(dropped.value)
        assert len(bare.list_api_keys()) == 2
    finally:
        bare.dispose()


# ------------------------------------------------------------------ the REST API


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_api_answers_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    settings = Settings(database_url=CLOSED, artifact_root=tmp_path / "a")
    with TestClient(create_app(settings)) as client:  # starts although the database is down
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["code"] == "not_ready"
        for method, path in (("get", "/v1/jobs"), ("get", "/v1/jobs/" + "0" * 32)):
            response = client.request(method, path, headers=_bearer("rk_" + "x" * 43))
            assert response.status_code == 503, response.text
            assert response.json() == {
                "code": "database_unavailable",
                "message": response.json()["message"],
            }
            assert int(response.headers["Retry-After"]) > 0
        assert client.get("/v1/jobs").status_code == 401  # no key: refused before the database

    # A store given to the app whose server goes away: the same answer.
    store = Store(make_engine(CLOSED))
    with TestClient(create_app(settings, store)) as client:
        response = client.get("/v1/jobs", headers=_bearer("rk_" + "x" * 43))
        assert response.status_code == 503 and response.json()["code"] == "database_unavailable"
    store.dispose()


def test_api_recovers_on_its_own_after_an_outage(pg_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=pg_url, artifact_root=tmp_path / "a")
    key_store = Store.open(pg_url)
    key = key_store.create_api_key("alice")[0]
    key_store.dispose()
    try:
        with TestClient(create_app(settings)) as client:
            assert client.get("/v1/jobs", headers=_bearer(key)).status_code == 200
            _allow_connections(pg_url, False)
            down = client.get("/v1/jobs", headers=_bearer(key))
            assert down.status_code == 503 and down.json()["code"] == "database_unavailable"
            assert client.get("/readyz").status_code == 503
            _allow_connections(pg_url, True)
            assert client.get("/readyz").status_code == 200
            assert client.get("/v1/jobs", headers=_bearer(key)).json()["jobs"] == []

            # the app started while the database was down opens its store once it is back
            _allow_connections(pg_url, False)
            with TestClient(create_app(settings)) as late:
                assert late.get("/readyz").status_code == 503
                response = late.get("/v1/jobs", headers=_bearer(key))
                assert response.status_code == 503
                _allow_connections(pg_url, True)
                assert late.get("/v1/jobs", headers=_bearer(key)).status_code == 200
                assert late.get("/readyz").status_code == 200
    finally:
        _allow_connections(pg_url, True)


def test_events_stream_stays_open_through_an_outage(pg_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=pg_url, artifact_root=tmp_path / "a")
    store = Store.open(pg_url)
    key, owner = store.create_api_key("alice")
    job = store.create_job(owner.id, {"arch": "rankopt:lenet5"}, "x/weights.pt", trials_total=2)
    app = create_app(settings, store, sse_poll_s=0.02, sse_heartbeat_s=0.05)
    failures: list[BaseException] = []

    def outage_then_cancel() -> None:
        try:
            time.sleep(0.2)
            _allow_connections(pg_url, False)
            time.sleep(0.5)
            _allow_connections(pg_url, True)
            time.sleep(0.2)
            store.request_cancel(job.id, owner.id)  # QUEUED: cancelled at once
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    thread = threading.Thread(target=outage_then_cancel)
    try:
        with TestClient(app) as client:
            thread.start()
            response = client.get(f"/v1/jobs/{job.id}/events", headers=_bearer(key))
            thread.join(30)
    finally:
        _allow_connections(pg_url, True)
        store.dispose()
    assert not failures, failures
    assert response.status_code == 200
    text_ = response.text
    assert text_.count(": heartbeat") >= 3  # kept alive while the database was away
    assert "event: end" in text_ and '"status":"CANCELLED"' in text_
    assert "event: error" not in text_
