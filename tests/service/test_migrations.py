"""Schema migrations, engine set-up, and the import boundary of ``service``."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.store import (
    TABLE_PREFIX,
    VERSION_TABLE,
    MigrationError,
    Store,
    check_schema,
    current_revision,
    head_revision,
    make_engine,
    normalize_url,
    upgrade,
)
from service.store.migrate import MIGRATIONS_DIR
from service.store.models import Base

REPO = Path(__file__).resolve().parents[2]
OUR_TABLES = {"rankopt_api_keys", "rankopt_jobs", "rankopt_artifacts", "rankopt_idempotency"}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_creates_prefixed_tables_and_own_version_table(db_url: str) -> None:
    upgrade(db_url)
    tables = _tables(db_url)
    assert tables == OUR_TABLES | {VERSION_TABLE}
    assert VERSION_TABLE == "rankopt_alembic_version"
    assert all(name.startswith(TABLE_PREFIX) for name in tables)
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) == head_revision() == "0002"
        check_schema(engine)
    finally:
        engine.dispose()


def test_upgrade_is_idempotent(db_url: str) -> None:
    upgrade(db_url)
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
        assert [v for (v,) in versions] == ["0002"]
    finally:
        engine.dispose()


def test_models_match_migrations(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    # The version table is not in our metadata; everything else must match.
    diff = [d for d in diff if not (d[0] == "remove_table" and d[1].name == VERSION_TABLE)]
    assert diff == []


def test_coexists_with_optuna(db_url: str) -> None:
    optuna = pytest.importorskip("optuna")
    upgrade(db_url)
    storage = optuna.storages.RDBStorage(db_url, engine_kwargs={"poolclass": sa.pool.NullPool})
    try:
        study = optuna.create_study(storage=storage, study_name="job-x")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    finally:
        storage.engine.dispose()
    upgrade(db_url)  # again, with Optuna's tables and alembic_version present
    tables = _tables(db_url)
    assert {"alembic_version", VERSION_TABLE} <= tables
    assert tables >= OUR_TABLES
    # Every table of ours is prefixed; every other table is Optuna's.
    assert all(name.startswith(TABLE_PREFIX) for name in Base.metadata.tables)
    from optuna.storages._rdb.models import BaseModel

    optuna_tables = set(BaseModel.metadata.tables) | {"alembic_version"}
    assert tables - OUR_TABLES - {VERSION_TABLE} == optuna_tables
    assert {"studies", "trials"} <= optuna_tables
    # Optuna still works on the shared database and our store too.
    storage = optuna.storages.RDBStorage(db_url, engine_kwargs={"poolclass": sa.pool.NullPool})
    try:
        assert optuna.load_study(study_name="job-x", storage=storage).trials[0].state.is_finished()
    finally:
        storage.engine.dispose()
    store = Store.open(db_url, migrate=False)
    try:
        _, key = store.create_api_key("k")
        assert store.authenticate("rk_nope") is None and key.id == 1
    finally:
        store.dispose()


def test_check_schema_on_empty_database(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with pytest.raises(MigrationError, match=r"not created.*upgrade"):
            check_schema(engine)
        with pytest.raises(MigrationError):
            Store.open(db_url, migrate=False)
    finally:
        engine.dispose()


def test_unknown_revision_is_refused(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
        with pytest.raises(MigrationError, match="newer rankopt"):
            upgrade(engine)
        with pytest.raises(MigrationError, match="'9999'"):
            check_schema(engine)
    finally:
        engine.dispose()


def test_migration_scripts_are_package_data() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_initial.py").is_file()
    text = (REPO / "pyproject.toml").read_text()
    assert '"service.store" = ["migrations/*.py", "migrations/versions/*.py"]' in text


def test_sqlite_engine_setup(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "x.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert path.exists()
        statements: list[str] = []
        sa.event.listen(
            engine,
            "before_cursor_execute",
            lambda conn, cursor, stmt, *args: statements.append(stmt),
        )
        sa.event.listen(engine, "begin", lambda conn: statements.append("<begin>"))
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT 1"))
        # Our begin hook runs first and emits BEGIN IMMEDIATE itself.
        assert "BEGIN IMMEDIATE" in statements
    finally:
        engine.dispose()


def test_sqlite_in_memory_engine() -> None:
    engine = make_engine("sqlite://")
    try:
        upgrade(engine)
        store = Store(engine)
        assert store.create_api_key("x")[1].name == "x"
        assert store.ping()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
        ("sqlite:///x.db", "sqlite"),
    ],
)
def test_normalize_url(url: str, driver: str) -> None:
    assert normalize_url(url).drivername == driver


def test_unsupported_database() -> None:
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        normalize_url("mysql://u@h/db")
    with pytest.raises(ValueError, match="cannot parse"):
        normalize_url("not a url")


def test_ping_fails_cleanly_on_unreachable_database() -> None:
    store = Store(
        make_engine("postgresql://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    )
    try:
        assert store.ping() is False
    finally:
        store.dispose()


def test_service_imports_without_torch() -> None:
    code = (
        "import sys; import service, service.store, service.settings; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'optuna' not in sys.modules, 'optuna imported'; "
        "assert not any(m == 'worker' or m.startswith('worker.') for m in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_concurrent_upgrades(db_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            upgrade(db_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert _tables(db_url) == OUR_TABLES | {VERSION_TABLE}


def test_sqlite_engines_racing_to_switch_a_new_file_to_wal(tmp_path: Path) -> None:
    # SQLite answers "database is locked" at once (no busy wait) to connections racing to turn
    # a fresh file into WAL mode; make_engine must wait for the winner instead of failing.
    errors: list[BaseException] = []
    for attempt in range(30):
        url = f"sqlite:///{tmp_path}/race{attempt}.db"
        barrier = threading.Barrier(6)

        def connect(url: str = url, barrier: threading.Barrier = barrier) -> None:
            engine = make_engine(url)
            try:
                barrier.wait(timeout=30)
                with engine.begin() as connection:
                    connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
                    mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
                    assert str(mode).lower() == "wal"
            except BaseException as exc:
                errors.append(exc)
            finally:
                engine.dispose()

        threads = [threading.Thread(target=connect) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert errors == []
