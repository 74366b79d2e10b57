"""A phase that fails after its lease went to another worker: the failure is the takeover's
consequence (the new holder may clean the old one's staging folder away), so it is logged as
a lost lease and counts towards no limit of the job."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from service.store import ApiKeyRecord, JobStatus, Store
from tests.worker.pool_support import submit, train_weights
from worker.pool import Worker
from worker.pool import _phases as phases_module


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_weights(tmp_path_factory)


def test_an_error_after_the_lease_was_taken_over_is_not_counted(
    settings: Settings,
    store: Store,
    owner: ApiKeyRecord,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = submit(store, settings, owner, weights, trials=2)
    worker = Worker(settings, store, worker_id="w-slow", device="cpu", poll_interval=0.05)

    def taken_over_then_broken(*args: Any, **kwargs: Any) -> Any:
        # The lease expires while this worker stalls; another takes the finalize phase over
        # and cleans the staging folder this worker was writing to.
        store.release_lease(job.id, "w-slow")
        assert store.claim("w-other") is not None
        time.sleep(3 * settings.heartbeat_seconds)
        raise FileNotFoundError("staging/pareto.png")

    monkeypatch.setattr(phases_module, "publish_results", taken_over_then_broken)
    try:
        with caplog.at_level(logging.INFO):
            worker.run(once=True)
    finally:
        worker.close()
    current = store.load_job(job.id)
    assert current.status is JobStatus.FINALIZING and current.lease_owner == "w-other"
    assert current.phase_errors == 0  # not the phase's fault
    events = [getattr(r, "event", "") for r in caplog.records]
    assert "finalize_error" not in events
    lost = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "lease_lost"]
    assert any("not counted (FileNotFoundError: staging/pareto.png)" in m for m in lost), lost
