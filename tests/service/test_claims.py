"""Claims and leases: exclusivity under real concurrency, expiry, takeover, LeaseLost."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from service.store import (
    ApiKeyRecord,
    JobStatus,
    LeaseLost,
    Store,
    make_engine,
)
from tests.service._race import claim_all
from tests.service.conftest import FakeClock


def _queue(
    store: Store,
    owner: ApiKeyRecord,
    n: int = 1,
    trials_total: int = 4,
    timeout_s: float | None = None,
) -> list[str]:
    return [
        store.create_job(owner.id, {"i": i}, "w", trials_total=trials_total, timeout_s=timeout_s).id
        for i in range(n)
    ]


def _race_threads(url: str, n_threads: int) -> dict[str, list[str]]:
    barrier = threading.Barrier(n_threads)
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def run(worker_id: str) -> None:
        store = Store(make_engine(url), lease_s=300.0)
        mine: list[str] = []
        try:
            barrier.wait(timeout=30)
            while (claim := store.claim(worker_id)) is not None:
                mine.append(claim.job.id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            claimed[worker_id] = mine
            store.dispose()

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    return claimed


def test_one_job_one_winner_threads(store: Store, owner: ApiKeyRecord, migrated_url: str) -> None:
    (job_id,) = _queue(store, owner)
    claimed = _race_threads(migrated_url, 8)
    winners = [w for w, ids in claimed.items() if ids]
    assert len(winners) == 1 and claimed[winners[0]] == [job_id]
    job = store.load_job(job_id)
    assert job.status is JobStatus.PREPARING
    assert job.lease_owner == winners[0] and job.attempts == 1


def test_many_jobs_each_claimed_once_threads(
    store: Store, owner: ApiKeyRecord, migrated_url: str
) -> None:
    ids = _queue(store, owner, 20)
    claimed = _race_threads(migrated_url, 8)
    all_claims = [job_id for mine in claimed.values() for job_id in mine]
    assert sorted(all_claims) == sorted(ids)
    for job_id in ids:
        job = store.load_job(job_id)
        assert job.status is JobStatus.PREPARING and job.attempts == 1
        assert job_id in claimed[str(job.lease_owner)]


def test_many_jobs_each_claimed_once_processes(
    store: Store, owner: ApiKeyRecord, migrated_url: str
) -> None:
    ids = _queue(store, owner, 12)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=claim_all, args=(migrated_url, f"p{i}", barrier, results))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    claimed = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    all_claims = [job_id for mine in claimed.values() for job_id in mine]
    assert sorted(all_claims) == sorted(ids)


def test_claim_order_and_fields(store: Store, owner: ApiKeyRecord, clock: FakeClock) -> None:
    first, second = _queue(store, owner, 2)
    a = store.claim("w1", lease_s=5)
    assert a is not None and a.kind == "prepare" and a.job.id == first
    assert a.worker_id == "w1" and a.job.lease_kind == "prepare"
    assert a.lease_expires_at is not None and a.job.lease_expires_at == a.lease_expires_at
    assert 4.9 < (a.lease_expires_at - clock.now).total_seconds() <= 5
    b = store.claim("w2")
    assert b is not None and b.job.id == second
    assert store.claim("w3") is None


def test_lease_expiry_takeover(store: Store, owner: ApiKeyRecord, clock: FakeClock) -> None:
    (job_id,) = _queue(store, owner)
    assert store.claim("w1", lease_s=10) is not None
    clock.advance(9)
    assert store.claim("w2") is None  # still live
    clock.advance(2)
    taken = store.claim("w2", lease_s=10)
    assert taken is not None and taken.kind == "prepare" and taken.job.id == job_id
    assert taken.job.lease_owner == "w2" and taken.job.attempts == 2
    # The first worker lost the lease: none of its writes go through.
    with pytest.raises(LeaseLost, match="held by 'w2'"):
        store.heartbeat(job_id, "w1")
    with pytest.raises(LeaseLost):
        store.finish_prepare(job_id, "w1", 0.9)
    with pytest.raises(LeaseLost):
        store.fail_job(job_id, "w1", "boom", "boom")
    with pytest.raises(LeaseLost):
        store.release_lease(job_id, "w1")
    with pytest.raises(LeaseLost):
        store.add_artifact(job_id, "a.txt", "x/a.txt", "0" * 64, 1, worker_id="w1")
    job = store.load_job(job_id)
    assert job.status is JobStatus.PREPARING and job.lease_owner == "w2"
    assert store.finish_prepare(job_id, "w2", 0.9).status is JobStatus.SEARCHING


def test_real_short_lease_expires(migrated_url: str) -> None:
    store = Store(make_engine(migrated_url), lease_s=0.2)
    try:
        _, key = store.create_api_key("k")
        (job_id,) = _queue(store, key)
        assert store.claim("w1") is not None
        assert store.claim("w2") is None
        time.sleep(0.3)
        taken = store.claim("w2")
        assert taken is not None and taken.job.id == job_id
        with pytest.raises(LeaseLost):
            store.heartbeat(job_id, "w1")
    finally:
        store.dispose()


def test_heartbeat_renews(store: Store, owner: ApiKeyRecord, clock: FakeClock) -> None:
    (job_id,) = _queue(store, owner)
    store.claim("w1", lease_s=10)
    for _ in range(5):
        clock.advance(8)
        assert store.heartbeat(job_id, "w1", lease_s=10) is False
        assert store.claim("w2") is None
    job = store.load_job(job_id)
    assert job.lease_owner == "w1" and job.attempts == 1
    # An expired lease that nobody took over can still be renewed by its holder.
    clock.advance(30)
    assert store.heartbeat(job_id, "w1") is False
    assert store.claim("w2") is None


def test_finish_job_requires_lease(store: Store, owner: ApiKeyRecord, clock: FakeClock) -> None:
    (job_id,) = _queue(store, owner, trials_total=1)
    store.claim("w1")
    store.finish_prepare(job_id, "w1", 0.5)
    store.update_progress(job_id, trials_done=1, trials_running=0)
    fin = store.claim("w1")
    assert fin is not None and fin.kind == "finalize"
    clock.advance(11)
    taken = store.claim("w2")
    assert taken is not None and taken.kind == "finalize" and taken.job.attempts == 2
    with pytest.raises(LeaseLost):
        store.finish_job(job_id, "w1", {"x": 1})
    done = store.finish_job(job_id, "w2", {"x": 2})
    assert done.status is JobStatus.SUCCEEDED and done.result == {"x": 2}
    assert done.finished_at is not None and done.lease_owner is None
    with pytest.raises(LeaseLost, match="SUCCEEDED"):
        store.heartbeat(job_id, "w2")


def test_gives_up_after_max_attempts(store: Store, owner: ApiKeyRecord, clock: FakeClock) -> None:
    job_id, other_id = _queue(store, owner, 2)
    first = store.claim("w1")
    assert first is not None and first.job.id == job_id and first.job.attempts == 1
    clock.advance(11)  # w1 dies
    # The takeover ranks before the next QUEUED job.
    second = store.claim("w2")
    assert second is not None and second.job.id == job_id and second.job.attempts == 2
    store.release_lease(job_id, "w2", "CUDA out of memory")
    third = store.claim("w3")
    assert third is not None and third.job.id == job_id and third.job.attempts == 3
    store.release_lease(job_id, "w3", "CUDA out of memory")
    fourth = store.claim("w4")
    assert fourth is not None and fourth.job.id == job_id and fourth.job.attempts == 4
    store.release_lease(job_id, "w4", "CUDA out of memory")  # the phase raised 3 times
    # A fifth claim fails the job and hands out the next one instead.
    fifth = store.claim("w5")
    assert fifth is not None and fifth.job.id == other_id
    failed = store.load_job(job_id)
    assert failed.status is JobStatus.FAILED and failed.error_code == "prepare_failed"
    assert failed.error_message == (
        "prepare failed 3 times; last error: CUDA out of memory; the worker also vanished once"
    )
    assert failed.finished_at is not None and failed.lease_owner is None
    assert failed.to_public()["error"]["code"] == "prepare_failed"


def test_give_up_message_without_recorded_error(
    store: Store, owner: ApiKeyRecord, clock: FakeClock
) -> None:
    (job_id,) = _queue(store, owner)
    for _ in range(store.max_lost_leases):
        assert store.claim("w") is not None
        clock.advance(11)
    assert store.claim("w") is None
    job = store.load_job(job_id)
    assert job.status is JobStatus.FAILED and job.error_code == "prepare_lost"
    assert job.error_message is not None
    assert job.error_message.startswith(
        f"prepare never finished: its worker vanished {store.max_lost_leases} times (the lease "
        "expired with no error recorded"
    )


def test_claim_finalize(store: Store, owner: ApiKeyRecord) -> None:
    (job_id,) = _queue(store, owner)
    store.claim("w1")
    assert store.claim_finalize(job_id, "w1") is None  # still PREPARING
    store.finish_prepare(job_id, "w1", 0.9)
    got = store.claim_finalize(job_id, "w2", lease_s=7)
    assert got is not None and got.kind == "finalize" and got.job.status is JobStatus.FINALIZING
    assert got.job.attempts == 1 and got.job.lease_owner == "w2"
    assert store.claim_finalize(job_id, "w3") is None  # exactly once


def test_spent_budget_is_finalised_by_claim(
    store: Store, owner: ApiKeyRecord, clock: FakeClock
) -> None:
    by_count, by_time, busy = _queue(store, owner, 3, trials_total=4, timeout_s=100.0)
    for job_id in (by_count, by_time, busy):
        store.claim("p")
        store.finish_prepare(job_id, "p", 0.9)
    store.update_progress(by_count, trials_done=4, trials_running=0)
    store.update_progress(busy, trials_done=4, trials_running=1)
    assert store.update_progress(by_time, trials_done=1, trials_running=0) is True
    claim = store.claim("f")
    assert claim is not None and claim.kind == "finalize" and claim.job.id == by_count
    store.finish_job(by_count, "f", {})
    assert store.claim("f") is None  # by_time has time left, busy has a trial running
    clock.advance(101)
    claim = store.claim("f")
    assert claim is not None and claim.job.id == by_time
    store.finish_job(by_time, "f", {})
    assert store.claim("f") is None
    clock.advance(store.stale_progress_s)  # busy's workers stopped reporting
    claim = store.claim("f")
    assert claim is not None and claim.job.id == busy and claim.job.status is JobStatus.FINALIZING
