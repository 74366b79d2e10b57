"""The lease-loss policy: a phase that raised is told apart from one whose worker vanished.

A phase that raised (the worker recorded an error and gave the lease back) fails the job after
``max_attempts`` (``RANKOPT_MAX_PHASE_ATTEMPTS``); a worker that vanished (its lease expired,
nothing recorded) only after ``max_lost_leases`` (``RANKOPT_MAX_LOST_LEASES``). Both backends.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from service.settings import Settings
from service.store import ApiKeyRecord, JobStatus, Store, make_engine, upgrade, utcnow
from service.store._base import transition
from tests.service.conftest import FakeClock


def _queue(store: Store, owner: ApiKeyRecord) -> str:
    return store.create_job(owner.id, {}, "w", trials_total=2).id


def test_vanished_workers_do_not_fail_the_job_at_the_error_limit(
    store: Store, owner: ApiKeyRecord, clock: FakeClock
) -> None:
    job_id = _queue(store, owner)
    for _ in range(store.max_attempts + 1):  # more vanished workers than raised phases allowed
        assert store.claim("w") is not None
        clock.advance(11)
    claim = store.claim("w")
    assert claim is not None and claim.job.id == job_id
    job = claim.job
    assert job.status is JobStatus.PREPARING and job.attempts == store.max_attempts + 2
    assert job.lost_leases == store.max_attempts + 1 and job.phase_errors == 0


def test_vanished_workers_fail_the_job_past_their_own_limit(migrated_url: str) -> None:
    clock = FakeClock()
    store = Store(make_engine(migrated_url), lease_s=10.0, max_lost_leases=2, clock=clock)
    try:
        job_id = _queue(store, store.create_api_key("alice")[1])
        assert store.claim("w1") is not None
        clock.advance(11)
        assert store.claim("w2") is not None
        store.release_lease(job_id, "w2", "boom")
        assert store.claim("w3") is not None
        clock.advance(11)  # second vanished worker: the limit
        assert store.claim("w4") is None
        job = store.load_job(job_id)
    finally:
        store.dispose()
    assert job.status is JobStatus.FAILED and job.error_code == "prepare_lost"
    assert job.error_message == (
        "prepare never finished: its worker vanished 2 times (the lease expired with no error "
        "recorded: the worker was killed, crashed or stalled; the limit is 2, "
        "RANKOPT_MAX_LOST_LEASES); it also raised once, last: boom"
    )


def test_raised_and_vanished_are_counted_apart(
    store: Store, owner: ApiKeyRecord, clock: FakeClock
) -> None:
    job_id = _queue(store, owner)
    assert store.claim("w1") is not None
    store.release_lease(job_id, "w1", "prepare failed on worker w1: RuntimeError: boom")
    assert store.claim("w2") is not None
    clock.advance(11)  # w2 vanishes
    claim = store.claim("w3")
    assert claim is not None and claim.job.attempts == 3
    assert claim.job.phase_errors == 1 and claim.job.lost_leases == 1
    assert claim.job.error_message == "prepare failed on worker w1: RuntimeError: boom"


def test_a_shutdown_release_counts_towards_no_limit(store: Store, owner: ApiKeyRecord) -> None:
    job_id = _queue(store, owner)
    for _ in range(store.max_attempts + 2):
        assert store.claim("w") is not None
        store.release_lease(job_id, "w", "worker w shut down during prepare", raised=False)
    job = store.load_job(job_id)
    assert job.status is JobStatus.PREPARING and job.phase_errors == 0 and job.lost_leases == 0


def test_each_phase_counts_afresh(store: Store, owner: ApiKeyRecord, clock: FakeClock) -> None:
    job_id = _queue(store, owner)
    for _ in range(store.max_attempts - 1):
        assert store.claim("p") is not None
        store.release_lease(job_id, "p", "flaky")
    assert store.claim("p") is not None
    clock.advance(11)
    assert store.claim("p") is not None
    searching = store.finish_prepare(job_id, "p", 0.9)
    assert searching.status is JobStatus.SEARCHING and searching.error_message is None
    assert (searching.attempts, searching.phase_errors, searching.lost_leases) == (0, 0, 0)
    fin = store.claim_finalize(job_id, "f")
    assert fin is not None and (fin.job.attempts, fin.job.phase_errors, fin.job.lost_leases) == (
        1,
        0,
        0,
    )
    for n in range(store.max_attempts):
        if n:
            assert store.claim("f") is not None
        store.release_lease(job_id, "f", f"finalize failed: OSError {n}")
    assert store.claim("f") is None
    job = store.load_job(job_id)
    assert job.status is JobStatus.FAILED and job.error_code == "finalize_failed"
    assert job.error_message == f"finalize failed 3 times; last error: finalize failed: OSError {2}"


def test_the_limits_are_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKOPT_MAX_PHASE_ATTEMPTS", "2")
    monkeypatch.setenv("RANKOPT_MAX_LOST_LEASES", "7")
    settings = Settings(database_url=f"sqlite:///{tmp_path}/db.sqlite")
    assert (settings.max_phase_attempts, settings.max_lost_leases) == (2, 7)
    store = Store.from_settings(settings)
    try:
        assert (store.max_attempts, store.max_lost_leases) == (2, 7)
    finally:
        store.dispose()
    monkeypatch.delenv("RANKOPT_MAX_PHASE_ATTEMPTS")
    monkeypatch.delenv("RANKOPT_MAX_LOST_LEASES")
    defaults = Settings(database_url="sqlite:///x.db")
    assert (defaults.max_phase_attempts, defaults.max_lost_leases) == (3, 10)
    with pytest.raises(ValueError, match="max_lost_leases"):
        Settings(database_url="sqlite:///x.db", max_lost_leases=0)


def test_transition_writes_what_each_status_needs() -> None:
    now = utcnow()
    failed = transition(JobStatus.FAILED, now, error_code="x", error_message="y" * 5000)
    assert failed["status"] == "FAILED" and failed["finished_at"] == now
    assert failed["lease_owner"] is None and failed["trials_running"] == 0
    assert len(failed["error_message"]) == 4000
    with pytest.raises(TypeError, match="error_code"):
        transition(JobStatus.FAILED, now, error_message="y")
    searching = transition(
        JobStatus.SEARCHING, now, baseline_accuracy=0.5, deadline_at=None, trials_done=0
    )
    assert searching["search_started_at"] == now and searching["attempts"] == 0


def test_upgrade_keeps_existing_jobs(db_url: str) -> None:
    upgrade(db_url, "0001")
    engine = make_engine(db_url)
    now = utcnow().replace(tzinfo=None)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO rankopt_api_keys (id, name, key_hash, prefix, created_at) "
                    "VALUES (1, 'a', 'h', 'rk_', :now)"
                ),
                {"now": now},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO rankopt_jobs (id, owner_id, status, spec, weights_path, "
                    "study_name, trials_total, trials_done, trials_running, attempts, "
                    "trial_failures, created_at, updated_at) VALUES ('" + "a" * 32 + "', 1, "
                    "'PREPARING', '{}', 'w', 's', 2, 0, 0, 2, 0, :now, :now)"
                ),
                {"now": now},
            )
    finally:
        engine.dispose()
    upgrade(db_url)
    store = Store(make_engine(db_url))
    try:
        job = store.load_job("a" * 32)
    finally:
        store.dispose()
    assert (job.attempts, job.phase_errors, job.lost_leases) == (2, 0, 0)
