"""Programmatic Alembic migrations of the store schema.

The migration scripts ship inside the package (``service/store/migrations``), so a plain
``pip install`` can migrate without an ``alembic.ini``. Revisions are recorded in
``rankopt_alembic_version``; Optuna's own ``alembic_version`` in the same database is left alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import SQLAlchemyError

from service.store.engine import make_engine
from service.store.exceptions import MigrationError

__all__ = [
    "MIGRATIONS_DIR",
    "VERSION_TABLE",
    "alembic_config",
    "check_schema",
    "current_revision",
    "head_revision",
    "upgrade",
]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "rankopt_alembic_version"
# Serialises concurrent upgrades on PostgreSQL (API and workers starting together).
_PG_LOCK_ID = 0x72616E6B  # "rank"


def alembic_config(database_url: str | URL | None = None) -> Config:
    """An Alembic :class:`Config` built in code, pointing at the packaged migrations."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise MigrationError(
            f"migration scripts missing at {MIGRATIONS_DIR}: the package was installed without "
            "its package data; reinstall rankopt"
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url is not None:
        url = (
            database_url
            if isinstance(database_url, str)
            else database_url.render_as_string(hide_password=False)
        )
        # ConfigParser interpolation: a literal % must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision the packaged migrations know."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise MigrationError(f"no migration revisions found in {MIGRATIONS_DIR}")
    return head


def _current(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or ``None`` when the store schema was never created."""
    with engine.connect() as connection:
        return _current(connection)


def upgrade(database_url: str | URL | Engine, revision: str = "head") -> None:
    """Create or upgrade the store schema to ``revision`` (default: the newest).

    Safe to call at every start-up, from several processes at once, and on a database that also
    holds Optuna's tables.

    Raises:
        MigrationError: the database is at a revision this code does not know (a newer rankopt
            migrated it), or the migration itself failed.
    """
    own_engine = not isinstance(database_url, Engine)
    engine = make_engine(database_url) if not isinstance(database_url, Engine) else database_url
    config = alembic_config()
    where = engine.url.render_as_string(hide_password=True)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
            before = _current(connection)
            script = ScriptDirectory.from_config(config)
            if before is not None:
                try:
                    script.get_revision(before)
                except CommandError as exc:
                    raise MigrationError(
                        f"database {where} is at store revision {before!r}, which this version "
                        "of rankopt does not know (a newer rankopt migrated it); upgrade rankopt "
                        "on this machine"
                    ) from exc
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            after = _current(connection)
        if before != after:
            logger.info("store schema at %s migrated from %s to %s", where, before, after)
    except MigrationError:
        raise
    except (SQLAlchemyError, CommandError) as exc:
        raise MigrationError(f"migrating the store schema of {where} failed: {exc}") from exc
    finally:
        if own_engine:
            engine.dispose()


def check_schema(engine: Engine) -> None:
    """Raise :class:`MigrationError` unless the database is at the newest store revision."""
    head = head_revision()
    try:
        current = current_revision(engine)
    except SQLAlchemyError as exc:
        raise MigrationError(f"cannot read the store schema revision: {exc}") from exc
    if current != head:
        has_tables = VERSION_TABLE in inspect(engine).get_table_names()
        state = f"at revision {current!r}" if has_tables else "not created"
        raise MigrationError(
            f"store schema is {state}, expected {head!r}; run service.store.upgrade(database_url) "
            "(the service and workers do so at start-up)"
        )
