"""Jobs: creation, owner isolation, idempotency, pagination."""

from __future__ import annotations

import threading
from datetime import timezone

import pytest

from service.store import (
    ApiKeyRecord,
    IdempotencyConflict,
    InvalidCursor,
    JobNotFound,
    JobStatus,
    Store,
    make_engine,
    utcnow,
)


def _job(store: Store, owner: ApiKeyRecord) -> str:
    return store.create_job(owner.id, {"arch": "rankopt:lenet5"}, "up/w", trials_total=5).id


def test_create_and_get(store: Store, owner: ApiKeyRecord) -> None:
    job = store.create_job(
        owner.id,
        {"arch": "rankopt:lenet5", "nested": {"a": [1, 2]}},
        "uploads/w.safetensors",
        "uploads/d.npz",
        trials_total=12,
        timeout_s=600.0,
    )
    assert job.created
    assert job.status is JobStatus.QUEUED
    assert len(job.id) == 32 and job.study_name == f"job-{job.id}"
    assert (job.trials_total, job.timeout_s, job.trials_done, job.trials_running) == (12, 600, 0, 0)
    assert job.created_at.tzinfo is timezone.utc
    got = store.get_job(job.id, owner.id)
    assert got == job and not got.created
    assert got.spec == {"arch": "rankopt:lenet5", "nested": {"a": [1, 2]}}
    assert got.dataset_path == "uploads/d.npz"
    public = got.to_public()
    assert public["status"] == "QUEUED" and public["progress"]["trials_total"] == 12
    assert "lease_owner" not in public and public["error"] is None


def test_create_validates(store: Store, owner: ApiKeyRecord) -> None:
    with pytest.raises(ValueError, match="trials_total"):
        store.create_job(owner.id, {}, "w", trials_total=0)
    with pytest.raises(ValueError, match="timeout_s"):
        store.create_job(owner.id, {}, "w", trials_total=1, timeout_s=0)
    with pytest.raises(ValueError, match="JSON"):
        store.create_job(owner.id, {"x": object()}, "w", trials_total=1)
    with pytest.raises(ValueError, match="JSON"):
        store.create_job(owner.id, {"x": float("nan")}, "w", trials_total=1)


def test_owner_isolation(store: Store, owner: ApiKeyRecord, other: ApiKeyRecord) -> None:
    job_id = _job(store, owner)
    with pytest.raises(JobNotFound) as missing:
        store.get_job(job_id, other.id)
    with pytest.raises(JobNotFound) as foreign:
        store.get_job("0" * 32, other.id)
    assert type(missing.value) is type(foreign.value)  # same error either way
    with pytest.raises(JobNotFound):
        store.request_cancel(job_id, other.id)
    with pytest.raises(JobNotFound):
        store.delete_job(job_id, other.id)
    with pytest.raises(JobNotFound):
        store.get_artifact(job_id, other.id, "model.safetensors")
    with pytest.raises(JobNotFound):
        store.list_artifacts(job_id, other.id)
    with pytest.raises(JobNotFound):
        store.get_job("../../etc", owner.id)
    assert store.list_jobs(other.id) == ([], None)
    assert store.get_job(job_id, owner.id).status is JobStatus.QUEUED  # untouched


def test_idempotency(store: Store, owner: ApiKeyRecord, other: ApiKeyRecord) -> None:
    first = store.create_job(
        owner.id, {"a": 1}, "w1", trials_total=3, request_hash="h1", idempotency_key="key-1"
    )
    again = store.create_job(
        owner.id, {"a": 1}, "w2", trials_total=3, request_hash="h1", idempotency_key="key-1"
    )
    assert first.created and not again.created
    assert again.id == first.id and again.weights_path == "w1"
    with pytest.raises(IdempotencyConflict, match="different request") as conflict:
        store.create_job(
            owner.id, {"a": 2}, "w3", trials_total=3, request_hash="h2", idempotency_key="key-1"
        )
    assert conflict.value.job_id == first.id
    # Keys are per owner.
    theirs = store.create_job(
        other.id, {"a": 1}, "w1", trials_total=3, request_hash="h1", idempotency_key="key-1"
    )
    assert theirs.created and theirs.id != first.id
    # Without a request hash the spec decides.
    a = store.create_job(owner.id, {"b": 1}, "w", trials_total=3, idempotency_key="key-2")
    assert store.create_job(owner.id, {"b": 1}, "x", trials_total=3, idempotency_key="key-2") == a
    with pytest.raises(IdempotencyConflict):
        store.create_job(owner.id, {"b": 2}, "w", trials_total=3, idempotency_key="key-2")
    assert len(store.list_jobs(owner.id)[0]) == 2
    with pytest.raises(ValueError, match="idempotency key"):
        store.create_job(owner.id, {}, "w", trials_total=3, idempotency_key="")


def test_idempotency_race(store: Store, owner: ApiKeyRecord, migrated_url: str) -> None:
    n = 8
    barrier = threading.Barrier(n)
    results: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        s = Store(make_engine(migrated_url))
        try:
            barrier.wait()
            job = s.create_job(owner.id, {"a": 1}, "w", trials_total=3, idempotency_key="race")
            results.append(job.id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            s.dispose()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == n and len(set(results)) == 1
    assert [j.id for j in store.list_jobs(owner.id)[0]] == results[:1]


def test_pagination(store: Store, owner: ApiKeyRecord, other: ApiKeyRecord) -> None:
    ids = [_job(store, owner) for _ in range(25)]
    _job(store, other)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = store.list_jobs(owner.id, limit=10, cursor=cursor)
        pages += 1
        seen.extend(j.id for j in page)
        if cursor is None:
            break
    assert pages == 3
    assert seen == ids[::-1]  # newest first, each once
    page, cursor = store.list_jobs(owner.id, limit=25)
    assert len(page) == 25 and cursor is None


def test_pagination_with_equal_timestamps(migrated_url: str, owner: ApiKeyRecord) -> None:
    frozen = utcnow()
    # Every job gets the same created_at: the id breaks ties.
    store = Store(make_engine(migrated_url), clock=lambda: frozen)
    ids = {_job(store, owner) for _ in range(7)}
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = store.list_jobs(owner.id, limit=3, cursor=cursor)
        seen.extend(j.id for j in page)
        if cursor is None:
            break
    store.dispose()
    assert len(seen) == 7 and set(seen) == ids
    assert seen == sorted(seen, reverse=True)


def test_list_filter_and_errors(store: Store, owner: ApiKeyRecord) -> None:
    a = _job(store, owner)
    b = _job(store, owner)
    store.request_cancel(a, owner.id)
    assert [j.id for j in store.list_jobs(owner.id, status="CANCELLED")[0]] == [a]
    assert [j.id for j in store.list_jobs(owner.id, status=JobStatus.QUEUED)[0]] == [b]
    with pytest.raises(ValueError, match="unknown job status"):
        store.list_jobs(owner.id, status="DONE")
    with pytest.raises(ValueError, match="limit"):
        store.list_jobs(owner.id, limit=0)
    with pytest.raises(ValueError, match="limit"):
        store.list_jobs(owner.id, limit=1000)
    for bad in ["garbage", "e30", "WyJ4IiwieSJd"]:
        with pytest.raises(InvalidCursor, match="next_cursor"):
            store.list_jobs(owner.id, cursor=bad)


def test_create_with_chosen_id_and_trial_total(store: Store, owner: ApiKeyRecord) -> None:
    chosen = "ab" * 16
    job = store.create_job(owner.id, {}, f"{chosen}/weights.pt", trials_total=3, job_id=chosen)
    assert job.id == chosen and job.study_name == f"job-{chosen}"
    for bad in ("short", "AB" * 16, "../" * 11):
        with pytest.raises(ValueError, match="job_id"):
            store.create_job(owner.id, {}, "w", trials_total=1, job_id=bad)
    assert store.count_trials_done() == 0
    other = _job(store, owner)
    store.update_progress(chosen, trials_done=2, trials_running=1)
    store.update_progress(other, trials_done=3, trials_running=0)
    assert store.count_trials_done() == 5
