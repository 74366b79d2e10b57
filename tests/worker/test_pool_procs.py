"""The worker pool across real processes: ``rankopt worker`` started as subprocesses on one
database, sharing a job's trials, surviving SIGKILL, stopping on SIGTERM.

On SQLite always; on PostgreSQL too when ``RANKOPT_TEST_POSTGRES_URL`` is set (a scratch
database per session, an empty schema per test), else its cases are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import FrozenTrial, TrialState

from service import procs
from service.procs import rankopt_env
from service.settings import Settings
from service.store import ApiKeyRecord, JobStatus, Store
from tests.postgres_support import base_url, reset_schema, scratch_database, skip_reason
from tests.worker.pool_support import (
    make_settings,
    settings_env,
    storage_of,
    submit,
    train_weights,
    trials_of,
    wait_for,
)
from worker.pool import WORKER_ATTR, Counts, Worker
from worker.pool._budget import INTERRUPTED_ATTR

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
#: Trials long enough (several epochs of small batches) to be caught running.
SLOW_TRIALS: dict[str, Any] = {"epochs_per_trial": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_weights(tmp_path_factory)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str | None]:
    if base_url() is None:
        yield None
        return
    with scratch_database("rankopt_pool") as url:
        yield url


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` unless a test asks for others with ``parametrize(..., indirect=True)``."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def settings(backend: str, tmp_path: Path, postgres_database: str | None) -> Settings:
    if backend == "sqlite":
        return make_settings(tmp_path)
    if postgres_database is None:
        pytest.skip(skip_reason())
    reset_schema(postgres_database)
    return make_settings(tmp_path, database_url=postgres_database)


class Proc(procs.Proc):
    """A ``rankopt worker`` subprocess with its log file; ``stop`` kills it."""

    def __init__(self, settings: Settings, folder: Path, *extra: str) -> None:
        super().__init__(
            "worker",
            ["worker", "--poll-interval", "0.2", *extra],
            env=rankopt_env(settings_env(settings), ROOT),
            log=folder / f"worker-{uuid.uuid4().hex[:6]}.log",
            cwd=ROOT,
        )

    def stop(self, timeout: float = 30) -> int | None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout)
        return self.popen.returncode


def _running_by(
    trials: list[FrozenTrial], worker_id: str, *, epochs: int = 0
) -> FrozenTrial | None:
    """A trial ``worker_id`` is running, past ``epochs`` epochs."""
    for trial in trials:
        if (
            trial.state == TrialState.RUNNING
            and trial.user_attrs.get(WORKER_ATTR) == worker_id
            and len(trial.intermediate_values) >= epochs
        ):
            return trial
    return None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_two_workers_share_a_study_and_survive_sigkill(
    settings: Settings, store: Store, owner: ApiKeyRecord, weights: Path, tmp_path: Path
) -> None:
    trials = 4
    # No EVBMF seeds: the retry of the killed trial is then the first plan in the queue (queued
    # plans run in order, and seeds beyond the budget would keep it waiting).
    job = submit(store, settings, owner, weights, trials=trials, seeding=False, **SLOW_TRIALS)
    storage = storage_of(settings)
    procs = [Proc(settings, tmp_path), Proc(settings, tmp_path)]
    victim, survivor = procs
    try:
        # Both workers run trials of the one study.
        wait_for(
            lambda: (
                {p.worker_id for p in procs}
                <= {t.user_attrs.get(WORKER_ATTR) for t in trials_of(storage, job.study_name)}
            ),
            90,
            "trials started by both workers",
        )
        # Mid-trial: past its first epoch (so it has sent heartbeats).
        killed = wait_for(
            lambda: _running_by(trials_of(storage, job.study_name), victim.worker_id, epochs=1),
            60,
            "a running trial of the victim",
        )
        victim.popen.send_signal(signal.SIGKILL)
        victim.popen.wait(30)
        wait_for(lambda: store.load_job(job.id).terminal, 120, "the job to finish", interval=0.2)
        survivor.popen.send_signal(signal.SIGTERM)
        assert survivor.popen.wait(30) == 0
    except BaseException:
        for proc in procs:
            proc.stop()
            print(proc.tail())
        raise
    finally:
        for proc in procs:
            proc.stop()
    if os.environ.get("POOL_DEBUG"):
        for proc in procs:
            print(proc.tail(200))
    done = store.load_job(job.id)
    assert done.status is JobStatus.SUCCEEDED, (done.error_code, done.error_message)
    assert done.trials_done == trials
    final = trials_of(storage, job.study_name)
    by_number = {t.number: t for t in final}
    # The killed trial was failed (heartbeat) and its plan run again: not lost, not counted twice.
    assert by_number[killed.number].state == TrialState.FAIL
    retries = [t for t in final if killed.number in t.system_attrs.get("retry_history", [])]
    assert retries and any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in retries)
    # The retry reuses every parameter the killed trial had drawn before it died.
    assert by_number[killed.number].params.items() <= retries[0].params.items()
    finished = [t for t in final if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == trials
    assert Counts(final).done == trials
    assert {t.user_attrs.get(WORKER_ATTR) for t in finished} >= {survivor.worker_id}
    assert store.load_job(job.id).result is not None


def test_sigterm_stops_a_worker_cleanly_and_another_resumes(
    settings: Settings, store: Store, owner: ApiKeyRecord, weights: Path, tmp_path: Path
) -> None:
    trials = 3
    job = submit(store, settings, owner, weights, trials=trials, **SLOW_TRIALS)
    storage = storage_of(settings)
    proc = Proc(settings, tmp_path, "--log-format", "json")
    try:
        wait_for(
            lambda: _running_by(trials_of(storage, job.study_name), proc.worker_id),
            90,
            "a running trial",
        )
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(30) == 0
    except BaseException:
        proc.stop()
        print(proc.tail())
        raise
    finally:
        proc.stop()
    log = proc.log.read_text()
    assert '"event": "shutdown_requested"' in log and '"event": "worker_stopped"' in log
    stopped = store.load_job(job.id)
    assert stopped.status is JobStatus.SEARCHING and stopped.trials_running == 0
    interrupted = [
        t for t in trials_of(storage, job.study_name) if t.user_attrs.get(INTERRUPTED_ATTR)
    ]
    assert len(interrupted) == 1 and interrupted[0].state == TrialState.FAIL

    worker = Worker(settings, store, worker_id="w-resume", device="cpu", poll_interval=0.05)
    try:
        worker.run(once=True)
    finally:
        worker.close()
    done = store.load_job(job.id)
    assert done.status is JobStatus.SUCCEEDED, (done.error_code, done.error_message)
    final = trials_of(storage, job.study_name)
    assert Counts(final).done == trials
    assert len([t for t in final if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == trials


def test_concurrency_spawns_worker_processes(settings: Settings, tmp_path: Path) -> None:
    """``--concurrency 2 --once`` on an empty queue: two named workers start and exit 0 (the
    worker processes themselves are exercised by the tests above)."""
    Store.from_settings(settings).dispose()
    proc = Proc(settings, tmp_path, "--concurrency", "2", "--once", "--log-format", "json")
    try:
        assert proc.popen.wait(120) == 0, proc.tail()
    finally:
        proc.stop()
    events = [
        json.loads(line) for line in proc.log.read_text().splitlines() if line.startswith("{")
    ]
    started = {e["worker"] for e in events if e["event"] == "worker_started"}
    assert len(started) == 2 and all(w.endswith(("-0", "-1")) for w in started)
    assert [e["message"] for e in events if e["event"] == "pool_stopped"] == [
        "worker processes exited with [0, 0]"
    ]
