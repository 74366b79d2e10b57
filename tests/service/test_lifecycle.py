"""Cancellation, the search phase, deletion, artifacts and metrics."""

from __future__ import annotations

import pytest

from service.store import (
    ApiKeyRecord,
    ArtifactNotFound,
    InvalidArtifactName,
    JobNotFinished,
    JobNotFound,
    JobStatus,
    LeaseLost,
    Store,
    search_budget_spent,
    validate_artifact_name,
)
from tests.service.conftest import FakeClock

SHA = "ab" * 32


def _new(store: Store, owner: ApiKeyRecord, timeout_s: float | None = None) -> str:
    return store.create_job(owner.id, {}, "w", trials_total=4, timeout_s=timeout_s).id


def _searching(store: Store, owner: ApiKeyRecord) -> str:
    job_id = _new(store, owner)
    claim = store.claim("prep")
    assert claim is not None and claim.job.id == job_id
    store.finish_prepare(job_id, "prep", 0.9)
    return job_id


# ---------------------------------------------------------------- cancellation
def test_cancel_queued_is_immediate(store: Store, owner: ApiKeyRecord) -> None:
    job_id = _new(store, owner)
    job = store.request_cancel(job_id, owner.id)
    assert job.status is JobStatus.CANCELLED and job.finished_at is not None
    assert store.request_cancel(job_id, owner.id).status is JobStatus.CANCELLED  # idempotent
    assert store.claim("w") is None
    assert store.is_cancel_requested(job_id) and store.should_stop(job_id)


def test_cancel_preparing_lease_holder_finishes(store: Store, owner: ApiKeyRecord) -> None:
    job_id = _new(store, owner)
    store.claim("w1")
    assert not store.is_cancel_requested(job_id) and not store.should_stop(job_id)
    assert store.request_cancel(job_id, owner.id).status is JobStatus.CANCELLING
    assert store.request_cancel(job_id, owner.id).status is JobStatus.CANCELLING
    assert store.is_cancel_requested(job_id) and store.should_stop(job_id)
    assert store.heartbeat(job_id, "w1") is True  # still ours, but stop
    assert store.claim("w2") is None  # the live lease keeps others off
    with pytest.raises(LeaseLost, match="CANCELLING"):
        store.finish_prepare(job_id, "w1", 0.9)
    with pytest.raises(LeaseLost):
        store.mark_cancelled(job_id, "w2")
    done = store.mark_cancelled(job_id, "w1")
    assert done.status is JobStatus.CANCELLED and done.lease_owner is None
    assert store.mark_cancelled(job_id, "w1").status is JobStatus.CANCELLED  # idempotent


def test_cancel_with_dead_lease_is_claimed(
    store: Store, owner: ApiKeyRecord, clock: FakeClock
) -> None:
    job_id = _new(store, owner)
    store.claim("w1")
    store.request_cancel(job_id, owner.id)
    assert store.claim("w2") is None
    clock.advance(11)
    claim = store.claim("w2")
    assert claim is not None and claim.kind == "cancel" and claim.lease_expires_at is None
    assert claim.job.status is JobStatus.CANCELLED and claim.job.finished_at is not None
    assert store.claim("w2") is None
    with pytest.raises(LeaseLost, match="CANCELLED"):
        store.heartbeat(job_id, "w1")


def test_cancel_searching(store: Store, owner: ApiKeyRecord) -> None:
    job_id = _searching(store, owner)
    assert store.request_cancel(job_id, owner.id).status is JobStatus.CANCELLING
    assert store.next_search_job("s") is None
    assert store.update_progress(job_id, trials_done=1, trials_running=1) is False
    # No lease in the search phase: any worker may close it (or a claim does).
    assert store.mark_cancelled(job_id, None).status is JobStatus.CANCELLED


def test_cancel_searching_via_claim(store: Store, owner: ApiKeyRecord) -> None:
    job_id = _searching(store, owner)
    store.request_cancel(job_id, owner.id)
    claim = store.claim("w")
    assert claim is not None and claim.kind == "cancel" and claim.job.id == job_id


def test_cancel_finalizing(store: Store, owner: ApiKeyRecord) -> None:
    job_id = _searching(store, owner)
    store.claim_finalize(job_id, "f")
    assert store.request_cancel(job_id, owner.id).status is JobStatus.CANCELLING
    with pytest.raises(LeaseLost):
        store.finish_job(job_id, "f", {})
    with pytest.raises(LeaseLost, match="held by 'f'"):
        store.mark_cancelled(job_id, None)  # the finaliser's lease is live
    assert store.mark_cancelled(job_id, "f").status is JobStatus.CANCELLED


@pytest.mark.parametrize("final", ["SUCCEEDED", "FAILED"])
def test_cancel_terminal_is_unchanged(store: Store, owner: ApiKeyRecord, final: str) -> None:
    job_id = _searching(store, owner)
    store.claim_finalize(job_id, "f")
    if final == "SUCCEEDED":
        store.finish_job(job_id, "f", {"ok": True})
    else:
        store.fail_job(job_id, "f", "oom", "out of memory; lower the batch size")
    job = store.request_cancel(job_id, owner.id)
    assert job.status.value == final
    assert store.should_stop(job_id) and not store.is_cancel_requested(job_id)


def test_fail_job_without_lease(store: Store, owner: ApiKeyRecord) -> None:
    job_id = _searching(store, owner)
    failed = store.fail_job(job_id, None, "bad_data", "labels out of range; fix the dataset")
    assert failed.status is JobStatus.FAILED and failed.error_code == "bad_data"
    assert failed.to_public()["error"] == {
        "code": "bad_data",
        "message": "labels out of range; fix the dataset",
    }
    again = store.fail_job(job_id, None, "other", "ignored")
    assert again.error_code == "bad_data"  # terminal: unchanged
    with pytest.raises(JobNotFound):
        store.fail_job("f" * 32, None, "x", "y")


# ---------------------------------------------------------------- search phase
def test_finish_prepare_sets_search_clock(
    store: Store, owner: ApiKeyRecord, clock: FakeClock
) -> None:
    job_id = _new(store, owner, timeout_s=60.0)
    store.claim("w")
    job = store.finish_prepare(job_id, "w", 0.875)
    assert job.status is JobStatus.SEARCHING and job.baseline_accuracy == 0.875
    assert job.search_started_at is not None and job.deadline_at is not None
    assert (job.deadline_at - job.search_started_at).total_seconds() == pytest.approx(60.0)
    assert job.lease_owner is None and job.attempts == 0
    assert not search_budget_spent(job, clock.now)
    clock.advance(61)
    assert job.budget_spent(clock.now)
    assert store.next_search_job("s") is None  # deadline passed


def test_next_search_job_round_robin(store: Store, owner: ApiKeyRecord) -> None:
    a = _searching(store, owner)
    b = _searching(store, owner)
    served = [store.next_search_job(f"s{i}") for i in range(6)]
    ids = [job.id if job else None for job in served]
    assert ids == [a, b, a, b, a, b]
    # A job whose budget is taken (done + running) is skipped.
    store.update_progress(a, trials_done=2, trials_running=2)
    for _ in range(3):
        job = store.next_search_job("s")
        assert job is not None and job.id == b
    store.update_progress(b, trials_done=4, trials_running=0)
    assert store.next_search_job("s") is None


def test_update_progress(store: Store, owner: ApiKeyRecord) -> None:
    job_id = _searching(store, owner)
    assert store.update_progress(
        job_id, trials_done=1, trials_running=2, best_compression=3.5, best_accuracy=0.8, eta_s=40
    )
    assert store.update_progress(job_id, trials_done=2, trials_running=1)
    job = store.load_job(job_id)
    assert (job.trials_done, job.trials_running, job.eta_s) == (2, 1, None)
    assert (job.best_compression, job.best_accuracy) == (3.5, 0.8)  # kept
    with pytest.raises(ValueError, match=">= 0"):
        store.update_progress(job_id, trials_done=-1, trials_running=0)
    assert store.update_progress("0" * 32, trials_done=0, trials_running=0) is False


def test_record_trial_failure(store: Store, owner: ApiKeyRecord) -> None:
    job_id = _searching(store, owner)
    assert store.record_trial_failure(job_id, "nan loss", max_failures=3).trial_failures == 1
    assert store.record_trial_failure(job_id, "nan loss", max_failures=3).status is (
        JobStatus.SEARCHING
    )
    job = store.record_trial_failure(job_id, "nan loss at epoch 2", max_failures=3)
    assert job.status is JobStatus.FAILED and job.error_code == "trials_failed"
    assert job.error_message == "3 trials failed (the limit is 3); last error: nan loss at epoch 2"
    with pytest.raises(JobNotFound):
        store.record_trial_failure("0" * 32, "x")


# ---------------------------------------------------------------- deletion
def test_delete_only_terminal(store: Store, owner: ApiKeyRecord) -> None:
    job_id = _searching(store, owner)
    with pytest.raises(JobNotFinished, match="cancel it first"):
        store.delete_job(job_id, owner.id)
    store.claim_finalize(job_id, "f")
    store.add_artifact(job_id, "model.safetensors", f"{job_id}/model.safetensors", SHA, 10)
    store.add_artifact(job_id, "report.json", f"{job_id}/report.json", SHA, 2, "application/json")
    with pytest.raises(JobNotFinished):
        store.delete_job(job_id, owner.id)
    store.finish_job(job_id, "f", {})
    paths = store.delete_job(job_id, owner.id)
    assert paths == [f"{job_id}/model.safetensors", f"{job_id}/report.json"]
    with pytest.raises(JobNotFound):
        store.get_job(job_id, owner.id)
    assert store.list_artifacts(job_id) == []
    with pytest.raises(JobNotFound):
        store.delete_job(job_id, owner.id)


def test_delete_frees_idempotency_key(store: Store, owner: ApiKeyRecord) -> None:
    first = store.create_job(owner.id, {}, "w", trials_total=1, idempotency_key="k")
    store.request_cancel(first.id, owner.id)
    assert store.delete_job(first.id, owner.id) == []
    second = store.create_job(owner.id, {}, "w", trials_total=1, idempotency_key="k")
    assert second.created and second.id != first.id


# ---------------------------------------------------------------- artifacts
def test_artifacts(store: Store, owner: ApiKeyRecord, other: ApiKeyRecord) -> None:
    job_id = _searching(store, owner)
    store.claim_finalize(job_id, "f")
    rec = store.add_artifact(
        job_id, "model.safetensors", "j/model.safetensors", SHA, 10, worker_id="f"
    )
    assert rec.created_at.tzinfo is not None and rec.to_public()["sha256"] == SHA
    assert "path" not in rec.to_public()
    # Re-adding replaces (a retried finalize rewrites its files).
    store.add_artifact(job_id, "model.safetensors", "j/model2.safetensors", "cd" * 32, 11)
    got = store.get_artifact(job_id, owner.id, "model.safetensors")
    assert (got.path, got.sha256, got.size) == ("j/model2.safetensors", "cd" * 32, 11)
    assert [a.name for a in store.list_artifacts(job_id, owner.id)] == ["model.safetensors"]
    with pytest.raises(ArtifactNotFound, match=r"no artifact 'nope\.bin'"):
        store.get_artifact(job_id, owner.id, "nope.bin")
    with pytest.raises(JobNotFound):
        store.get_artifact(job_id, other.id, "model.safetensors")
    with pytest.raises(JobNotFound):
        store.add_artifact("0" * 32, "a.bin", "a.bin", SHA, 1)
    with pytest.raises(ValueError, match="sha256"):
        store.add_artifact(job_id, "a.bin", "a.bin", "xyz", 1)
    with pytest.raises(ValueError, match="size"):
        store.add_artifact(job_id, "a.bin", "a.bin", SHA, -1)


@pytest.mark.parametrize(
    "name",
    ["", ".hidden", "..", "a..b", "a/b", "a\\b", "-x", "x" * 129, "a b", "naïve", "x\x00"],
)
def test_invalid_artifact_names(store: Store, owner: ApiKeyRecord, name: str) -> None:
    job_id = _new(store, owner)
    with pytest.raises(InvalidArtifactName, match="invalid artifact name"):
        store.add_artifact(job_id, name, "ok/path", SHA, 1)
    with pytest.raises(InvalidArtifactName):
        store.get_artifact(job_id, owner.id, name)


@pytest.mark.parametrize("path", ["", "/abs/x", "../x", "a/../b", "a//b", "./a", "a\\b", "C:x"])
def test_invalid_artifact_paths(store: Store, owner: ApiKeyRecord, path: str) -> None:
    job_id = _new(store, owner)
    with pytest.raises(InvalidArtifactName, match="invalid artifact path"):
        store.add_artifact(job_id, "a.bin", path, SHA, 1)


def test_valid_artifact_names() -> None:
    for name in ["model.safetensors", "report.json", "pareto.png", "A-1_b.c", "x" * 128]:
        assert validate_artifact_name(name) == name


# ---------------------------------------------------------------- metrics
def test_count_jobs_by_status_and_ping(store: Store, owner: ApiKeyRecord) -> None:
    _new(store, owner)
    _new(store, owner)
    cancelled = _new(store, owner)
    store.request_cancel(cancelled, owner.id)
    counts = store.count_jobs_by_status()
    assert set(counts) == {s.value for s in JobStatus}
    assert counts["QUEUED"] == 2 and counts["CANCELLED"] == 1 and counts["FAILED"] == 0
    assert store.ping() is True
