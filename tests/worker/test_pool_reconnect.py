"""The worker through database outages: the loop backs off and goes on, a trial cut short by
the database is neither counted nor held against the job, and (PostgreSQL) a worker whose
database refused connections for a while picks work up again on its own."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from service.settings import Settings
from service.store import ApiKeyRecord, JobStatus, Store, is_database_unavailable, make_engine
from tests.postgres_support import conninfo, require_postgres, scratch_database
from tests.worker.pool_support import (
    BASE_SPEC,
    make_settings,
    storage_of,
    submit,
    train_weights,
    trials_of,
    wait_for,
)
from worker.pool import Counts, Reaper, Worker
from worker.pool import _trial as trial_module
from worker.pool import _worker as worker_module
from worker.pool._budget import INTERRUPTED_ATTR
from worker.pool._storage import optuna_storage
from worker.pool._worker import MAX_DB_BACKOFF_S, db_backoff


def _outage() -> OperationalError:
    """What SQLAlchemy raises when the server went away."""
    return OperationalError(
        "SELECT 1", {}, ConnectionError("server closed the connection unexpectedly")
    )


def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def test_backoff_doubles_up_to_a_cap() -> None:
    assert [db_backoff(0.5, n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert db_backoff(0.5, 100) == MAX_DB_BACKOFF_S
    assert db_backoff(60.0, 1) == 60.0  # never shorter than the poll interval


def test_optuna_storage_errors_caused_by_an_outage_are_outages() -> None:
    try:
        try:
            raise _outage()
        except OperationalError as exc:  # what Optuna's RDB storage does with it
            raise optuna.exceptions.StorageInternalError("commit failed") from exc
    except optuna.exceptions.StorageInternalError as wrapped:
        assert is_database_unavailable(wrapped)
    assert not is_database_unavailable(optuna.exceptions.StorageInternalError("other"))


# The misleading message Optuna's RDB storage puts on any error during a commit.
_OPTUNA_COMMIT_MESSAGE = (
    "An exception is raised during the commit. This typically happens due to invalid data in "
    "the commit, e.g. exceeding max length."
)


def _reaper(store: Store) -> Reaper:
    storage = optuna.storages.InMemoryStorage()
    return Reaper(store, lambda: storage, worker_id="r", interval=5.0, silent_after=1.0)


def test_the_reaper_says_when_the_database_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing listens on port 1: every connection is refused, like a server restarting.
    engine = make_engine("postgresql+psycopg://rankopt@127.0.0.1:1/rankopt", poolclass=NullPool)
    store = Store(engine)
    reaper = _reaper(store)
    try:
        with caplog.at_level(logging.INFO, logger="worker.pool._reaper"):
            assert reaper.reap_logged() is False
            assert reaper.reap_logged() is False  # once per outage, not once per round
    finally:
        store.dispose()
    (record,) = _events(caplog, "reaper_db_unavailable")
    message = record.getMessage()
    assert "the database is unreachable (OperationalError: " in message
    assert "refused" in message.lower() and "invalid data" not in message
    assert not _events(caplog, "reaper_failed")


def test_the_reaper_sees_through_optunas_commit_error(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reaper = _reaper(store)
    failures = iter([True, True, False])

    def reap_once() -> int:
        if next(failures):
            try:
                raise _outage()
            except OperationalError as exc:  # what Optuna's storage does during a restart
                raise optuna.exceptions.StorageInternalError(_OPTUNA_COMMIT_MESSAGE) from exc
        return 0

    monkeypatch.setattr(reaper, "reap_once", reap_once)
    with caplog.at_level(logging.INFO, logger="worker.pool._reaper"):
        assert [reaper.reap_logged() for _ in range(3)] == [False, False, True]
    (down,) = _events(caplog, "reaper_db_unavailable")
    assert down.getMessage() == (
        "reaping stale trials paused: the database is unreachable (ConnectionError: server "
        "closed the connection unexpectedly); retrying every 5s"
    )
    assert len(_events(caplog, "reaper_db_reconnected")) == 1
    assert not _events(caplog, "reaper_failed")


def test_the_reaper_reports_other_errors_as_they_are(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reaper = _reaper(store)

    def reap_once() -> int:
        raise optuna.exceptions.StorageInternalError(_OPTUNA_COMMIT_MESSAGE)

    monkeypatch.setattr(reaper, "reap_once", reap_once)
    with caplog.at_level(logging.INFO, logger="worker.pool._reaper"):
        assert reaper.reap_logged() is False
    (record,) = _events(caplog, "reaper_failed")
    assert "invalid data" in record.getMessage()
    assert not _events(caplog, "reaper_db_unavailable")


def test_the_loop_backs_off_through_an_outage_and_carries_on(
    settings: Settings,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Worker(settings, store, worker_id="w-outage", device="cpu", poll_interval=0.01)
    calls = 0
    real_claim = store.claim

    def claim(worker_id: str, lease_s: float | None = None) -> Any:
        nonlocal calls
        calls += 1
        if calls <= 4:
            raise _outage()
        if calls >= 7:
            worker.stop_event.set()
        return real_claim(worker_id, lease_s)

    monkeypatch.setattr(store, "claim", claim)
    monkeypatch.setattr(worker_module, "MAX_DB_BACKOFF_S", 0.05)
    with caplog.at_level(logging.INFO, logger="worker.pool._worker"):
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        thread.join(30)
    worker.close()
    assert not thread.is_alive() and calls >= 7
    outages = _events(caplog, "database_unavailable")
    assert [r.fields["attempt"] for r in outages] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    waits = [r.fields["retry_in_s"] for r in outages]  # type: ignore[attr-defined]
    assert waits == sorted(waits) and waits[0] == 0.01
    assert all(r.levelno == logging.WARNING and not r.exc_info for r in outages)
    assert len(_events(caplog, "database_reconnected")) == 1
    assert not _events(caplog, "loop_error")
    assert _events(caplog, "worker_stopped")


def test_a_trial_cut_short_by_the_database_is_not_counted(
    settings: Settings,
    store: Store,
    owner: ApiKeyRecord,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(settings.artifact_root.parent, max_trial_failures=1)

    def objective_losing_the_database(ctx: Any, **kwargs: Any) -> Any:
        def objective(trial: optuna.Trial) -> float:
            raise _outage()

        return objective

    monkeypatch.setattr(trial_module, "make_objective", objective_losing_the_database)
    job = submit(store, settings, owner, train_weights(tmp_path_factory), trials=3)
    worker = Worker(settings, store, worker_id="w-trial", device="cpu", poll_interval=0.05)
    try:
        assert worker.run_once()  # prepare
        assert worker.run_once() and worker.run_once()  # two trials, both cut short
    finally:
        worker.close()
    searching = store.load_job(job.id)
    # With max_trial_failures=1 a single counted failure would have failed the job.
    assert searching.status is JobStatus.SEARCHING and searching.trial_failures == 0
    trials = trials_of(storage_of(settings), job.study_name)
    ended = [t for t in trials if t.state == TrialState.FAIL]
    assert len(ended) == 2 and all(t.user_attrs.get(INTERRUPTED_ATTR) for t in ended)
    assert Counts(trials).done == 0
    # the interrupted seed plans are queued again
    assert sum(t.state == TrialState.WAITING for t in trials) >= 2


# ------------------------------------------------------------------ PostgreSQL


@pytest.fixture
def pg_settings(tmp_path: Path) -> Iterator[Settings]:
    require_postgres()
    with scratch_database("rankopt_wrc") as url:
        yield make_settings(tmp_path, database_url=url, db_pool_size=2, db_max_overflow=3)


def _allow_connections(url: str, allow: bool) -> None:
    import psycopg

    admin = make_url(url).set(database="postgres").render_as_string(hide_password=False)
    name = make_url(url).database
    with psycopg.connect(conninfo(admin), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


def test_optuna_storage_uses_the_pool_settings(pg_settings: Settings) -> None:
    storage = optuna_storage(pg_settings)
    try:
        pool = storage.engine.pool
        assert pool.size() == 2 and pool._max_overflow == 3  # type: ignore[attr-defined]
        assert pool._pre_ping is True
    finally:
        storage.engine.dispose()


def test_worker_picks_up_work_after_the_database_comes_back(
    pg_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    url = pg_settings.database_url
    store = Store.from_settings(pg_settings)
    owner = store.create_api_key("alice")[1]
    worker = Worker(pg_settings, store, worker_id="w-pg", device="cpu", poll_interval=0.05)
    thread = threading.Thread(target=worker.run, daemon=True)
    try:
        with caplog.at_level(logging.INFO, logger="worker.pool._worker"):
            _allow_connections(url, False)
            thread.start()
            wait_for(lambda: len(_events(caplog, "database_unavailable")) >= 2, 30, "backoff")
            _allow_connections(url, True)
            # A job whose weights are missing: the worker that recovered claims and fails it.
            job = store.create_job(owner.id, BASE_SPEC, "gone/weights.safetensors", trials_total=2)
            wait_for(lambda: store.load_job(job.id).terminal, 60, "the job to be handled")
        assert thread.is_alive()
        assert store.load_job(job.id).status is JobStatus.FAILED
        assert _events(caplog, "database_reconnected")
        assert not _events(caplog, "loop_error")
    finally:
        _allow_connections(url, True)
        worker.stop_event.set()
        thread.join(30)
        worker.close()
        store.dispose()


def test_a_reaper_that_lost_the_database_forgets_the_silence_it_had_seen(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blind meanwhile, it cannot know whether the silent trial's worker wrote a heartbeat.
    reaper = _reaper(store)
    reaper._silent["job"] = {7: time.monotonic() - 100.0}

    def reap_once() -> int:
        raise _outage()

    monkeypatch.setattr(reaper, "reap_once", reap_once)
    assert reaper.reap_logged() is False
    assert reaper._silent == {}
