"""Engine construction for the store: SQLite (embedded default) and PostgreSQL (psycopg 3).

SQLite engines are set up for several processes sharing one file:

* WAL journal mode (readers never block the writer), ``synchronous=NORMAL``;
* ``busy_timeout`` so a writer waits for the lock instead of failing at once;
* ``foreign_keys=ON`` (SQLite ignores foreign keys otherwise);
* SQLAlchemy, not the ``sqlite3`` driver, emits ``BEGIN``: the driver's legacy transaction mode
  is switched off (``isolation_level = None``) and every transaction starts with
  ``BEGIN IMMEDIATE``, which takes the write lock up front, so a read-then-write (a claim)
  cannot interleave with another writer. A transaction that only reads can ask for a plain
  deferred ``BEGIN`` with :func:`read_only`. This is the recipe of SQLAlchemy's SQLite dialect
  documentation, "Enabling Non-Legacy SQLite Transactional Modes".

PostgreSQL engines keep a pool of connections per process (``pool_size`` kept open, up to
``max_overflow`` more under load), test every connection before handing it out
(``pool_pre_ping``: a connection the server dropped, e.g. after a restart, is replaced
transparently), recycle connections after ``pool_recycle`` seconds (so idle-connection timeouts
of firewalls and poolers never bite) and give up connecting after ``connect_timeout`` seconds.
:func:`is_database_unavailable` tells an outage (the server is down, restarting or out of
connections) from other errors, for the worker loop's back-off and the API's 503 answer.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_MAX_OVERFLOW",
    "DEFAULT_POOL_RECYCLE_S",
    "DEFAULT_POOL_SIZE",
    "SQLITE_BEGIN_OPTION",
    "describe_outage",
    "is_database_unavailable",
    "is_sqlite",
    "make_engine",
    "normalize_url",
    "outage_cause",
    "postgres_engine_kwargs",
    "read_only",
]

logger = logging.getLogger(__name__)

#: Execution option naming the SQLite ``BEGIN`` flavour: ``"IMMEDIATE"`` (default) or
#: ``"DEFERRED"``.
SQLITE_BEGIN_OPTION = "rankopt_sqlite_begin"

_BEGIN_MODES = {"IMMEDIATE", "DEFERRED", "EXCLUSIVE"}

#: PostgreSQL pool defaults (see :class:`service.settings.Settings` ``db_*``).
DEFAULT_POOL_SIZE = 5
DEFAULT_MAX_OVERFLOW = 10
DEFAULT_POOL_RECYCLE_S = 1800.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; PostgreSQL URLs without a driver (or with ``postgres://``) get psycopg 3.

    Raises:
        ValueError: the URL cannot be parsed or names an unsupported database.
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError as exc:
        raise ValueError(
            f"cannot parse database URL {str(url)!r}: {exc}; expected e.g. "
            "'sqlite:///./rankopt.db' or 'postgresql://user@host:5432/db'"
        ) from exc
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend != "sqlite":
        raise ValueError(
            f"unsupported database {backend!r} in URL "
            f"{parsed.render_as_string(hide_password=True)!r}; use SQLite or PostgreSQL"
        )
    return parsed


def is_sqlite(engine: Engine | Connection) -> bool:
    """True when ``engine`` talks to SQLite."""
    return engine.dialect.name == "sqlite"


def _is_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


def postgres_engine_kwargs(
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_overflow: int = DEFAULT_MAX_OVERFLOW,
    pool_recycle_s: float = DEFAULT_POOL_RECYCLE_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> dict[str, Any]:
    """Keyword arguments of :func:`sqlalchemy.create_engine` for a PostgreSQL engine: the pool
    sizes, ``pool_pre_ping``, ``pool_recycle`` and the driver's ``connect_timeout``."""
    if pool_size < 1 or max_overflow < 0:
        raise ValueError(
            f"pool_size must be at least 1 and max_overflow at least 0, got "
            f"pool_size={pool_size}, max_overflow={max_overflow}"
        )
    return {
        "pool_size": int(pool_size),
        "max_overflow": int(max_overflow),
        "pool_pre_ping": True,
        "pool_recycle": int(pool_recycle_s) if pool_recycle_s > 0 else -1,
        "connect_args": {"connect_timeout": max(1, math.ceil(connect_timeout_s))},
    }


def make_engine(
    url: str | URL,
    *,
    busy_timeout_s: float = 30.0,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_overflow: int = DEFAULT_MAX_OVERFLOW,
    pool_recycle_s: float = DEFAULT_POOL_RECYCLE_S,
    **kwargs: Any,
) -> Engine:
    """Create an engine for the store (see the module docstring).

    Args:
        url: SQLAlchemy URL; ``postgresql://`` is rewritten to ``postgresql+psycopg://``.
        busy_timeout_s: SQLite only: how long a statement waits for a locked database.
        pool_size, max_overflow, pool_recycle_s: PostgreSQL only: connections kept open per
            process, extra ones opened under load, and the age (seconds) after which a
            connection is replaced (0: never).
        **kwargs: passed to :func:`sqlalchemy.create_engine`; they win over the defaults above
            (``connect_args`` are merged).
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        defaults = postgres_engine_kwargs(
            pool_size=pool_size, max_overflow=max_overflow, pool_recycle_s=pool_recycle_s
        )
        if kwargs.get("poolclass") is not None:  # e.g. NullPool: no pool-size arguments
            for name in ("pool_size", "max_overflow"):
                defaults.pop(name)
        pg_connect = {**defaults.pop("connect_args"), **kwargs.pop("connect_args", {})}
        return create_engine(parsed, **{**defaults, **kwargs, "connect_args": pg_connect})

    memory = _is_memory(parsed)
    connect_args: dict[str, Any] = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", busy_timeout_s)
    connect_args.setdefault("check_same_thread", False)
    if memory:
        # One connection shared by everything, or each connection would see its own database.
        kwargs.setdefault("poolclass", StaticPool)
    else:
        assert parsed.database is not None
        database = parsed.database
        if database.startswith("file:"):
            database = database[len("file:") :].split("?", 1)[0]
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args=connect_args, **kwargs)
    busy_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
        # Stop the sqlite3 driver from emitting BEGIN itself; _on_begin below does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not memory:
                mode = _switch_to_wal(cursor, busy_timeout_s)
                if mode is None or str(mode[0]).lower() != "wal":
                    logger.warning(
                        "SQLite database %s could not switch to WAL journal mode (got %r); "
                        "concurrent workers will see more lock waits",
                        parsed.database,
                        mode[0] if mode else None,
                    )
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = str(conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")).upper()
        if mode not in _BEGIN_MODES:
            raise ValueError(f"{SQLITE_BEGIN_OPTION} must be one of {sorted(_BEGIN_MODES)}")
        conn.exec_driver_sql("BEGIN" if mode == "DEFERRED" else f"BEGIN {mode}")

    return engine


def _switch_to_wal(cursor: Any, busy_timeout_s: float) -> Any:
    """``PRAGMA journal_mode = WAL``, retried while another connection holds the file.

    Switching a fresh file to WAL needs an exclusive lock, and SQLite answers "database is
    locked" at once instead of calling the busy handler when connections race to do it (e.g.
    an API and workers starting together on a new database). Once one of them has switched,
    the mode is persistent and the others see ``wal`` straight away.
    """
    deadline = time.monotonic() + busy_timeout_s
    delay = 0.005
    while True:
        try:
            return cursor.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def read_only(engine: Engine) -> Engine:
    """A view of ``engine`` whose SQLite transactions start with a deferred ``BEGIN``.

    Use it for transactions that only read; on PostgreSQL it changes nothing.
    """
    return engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})


def is_database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) says the database cannot be
    reached right now: the server is down or restarting, the connection was lost, the pool has
    no free connection, or (SQLite) the file is locked or cannot be opened. Such errors go away
    on their own; retry later.

    Errors of the statement itself (a constraint, a syntax error, a missing table) are not
    outages.
    """
    return outage_cause(exc) is not None


def outage_cause(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain (``exc`` itself, or one it was raised from) that says
    the database is unreachable, or None (see :func:`is_database_unavailable`).

    Libraries wrap outages in errors that name other causes (Optuna's storage reports a
    connection refused during a commit as "invalid data, e.g. exceeding max length"); this
    finds the real one.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PoolTimeoutError):
            return current
        if isinstance(current, DBAPIError):
            if current.connection_invalidated:
                return current
            if isinstance(current, (OperationalError, InterfaceError)):
                if not _is_sqlite_error(current) or _SQLITE_OUTAGE.search(str(current.orig)):
                    return current
                return None
        current = current.__cause__ or current.__context__
    return None


def describe_outage(exc: BaseException) -> str | None:
    """A one-line message saying that the database is unreachable, with the driver's own words
    (e.g. "connection refused", "terminating connection due to administrator command"), or
    None when ``exc`` is no outage."""
    cause = outage_cause(exc)
    if cause is None:
        return None
    detail = cause.orig if isinstance(cause, DBAPIError) and cause.orig is not None else cause
    lines = [line.strip() for line in str(detail).splitlines() if line.strip()]
    reason = lines[0] if lines else type(detail).__name__
    return f"the database is unreachable ({type(detail).__name__}: {reason})"


#: SQLite errors that are outages rather than mistakes of the statement.
_SQLITE_OUTAGE = re.compile(r"locked|busy|unable to open|disk i/o|readonly", re.IGNORECASE)


def _is_sqlite_error(exc: DBAPIError) -> bool:
    return type(exc.orig).__module__.startswith("sqlite3")
