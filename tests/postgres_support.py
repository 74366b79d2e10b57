"""The PostgreSQL half of the suite: where the server is, scratch databases, the skip reason.

``RANKOPT_TEST_POSTGRES_URL`` names a PostgreSQL server (and a database to connect to for
``CREATE DATABASE``); ``.ci/run`` starts the local server when it is not answering, creates a
throw-away database for the run and sets it. Without it every PostgreSQL case is *skipped* with
the reason (``RANKOPT_TEST_POSTGRES_SKIP_REASON``, set by ``.ci/run`` when it could not start
a server, says why), so ``pytest -ra`` lists what did not run. When the variable is set but the
server does not answer, the PostgreSQL cases fail: they never pass silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy.engine import make_url

__all__ = [
    "POSTGRES_ENV",
    "SKIP_REASON_ENV",
    "base_url",
    "conninfo",
    "create_database",
    "drop_database",
    "require_postgres",
    "reset_schema",
    "scratch_database",
    "skip_reason",
]

POSTGRES_ENV = "RANKOPT_TEST_POSTGRES_URL"
SKIP_REASON_ENV = "RANKOPT_TEST_POSTGRES_SKIP_REASON"


def base_url() -> str | None:
    """The configured server URL, or None."""
    return os.environ.get(POSTGRES_ENV) or None


def skip_reason() -> str:
    """Why the PostgreSQL cases do not run here."""
    why = os.environ.get(SKIP_REASON_ENV)
    return f"PostgreSQL not available: {POSTGRES_ENV} is not set" + (
        f" ({why})"
        if why
        else " (.ci/run starts the local server and sets it; or point it at a server)"
    )


def require_postgres() -> str:
    """The server URL; skips the calling test (with the reason) when there is none."""
    url = base_url()
    if url is None:
        pytest.skip(skip_reason())
    return url


def conninfo(url: str) -> str:
    """A libpq connection string (psycopg) for a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(prefix: str = "rankopt_t") -> str:
    """Create an empty database on the configured server; its SQLAlchemy URL."""
    import psycopg

    base = require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(conninfo(base), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(base).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database of ``url`` (connections to it are terminated)."""
    import psycopg

    base = require_postgres()
    name = make_url(url).database
    with psycopg.connect(conninfo(base), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_database(prefix: str = "rankopt_t") -> Iterator[str]:
    """A new database for the ``with`` block, dropped at its end."""
    url = create_database(prefix)
    try:
        yield url
    finally:
        drop_database(url)


def reset_schema(url: str) -> None:
    """Empty the ``public`` schema of the database at ``url``."""
    from service.store import make_engine

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
    finally:
        engine.dispose()
