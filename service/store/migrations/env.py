"""Alembic environment of the rankopt store.

The store's revisions are tracked in ``rankopt_alembic_version``, never in Alembic's default
``alembic_version``, which belongs to Optuna's schema when both share a database. Only tables
prefixed ``rankopt_`` are the store's: autogenerate ignores the rest.

Run through :func:`service.store.migrate.upgrade`, which hands in a connection from
:func:`service.store.engine.make_engine` (``config.attributes["connection"]``); the
``alembic`` command line works too with ``sqlalchemy.url`` set in its ini file.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from service.store.engine import make_engine
from service.store.models import TABLE_PREFIX, Base

VERSION_TABLE = "rankopt_alembic_version"

config = context.config
target_metadata = Base.metadata


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    if type_ == "table":
        return bool(name) and str(name).startswith(TABLE_PREFIX)
    return True


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_name=_include_name,
        render_as_batch=True,
        compare_type=True,
        **kwargs,
    )


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit the SQL to stdout instead of running it."""
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the connection handed in, or on a new engine from the ini URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url in the Alembic config or pass a connection")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
