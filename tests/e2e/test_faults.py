"""Fault injection against real processes: the service keeps its promises when parts of it die.

* a worker SIGKILLed mid-finalise: another worker takes the phase over once the lease expires,
  the job succeeds, every registered artifact matches its digest and nothing half-written is
  left under the artifact root (SIGKILL mid-trial is covered by
  ``tests/worker/test_pool_procs.py::test_two_workers_share_a_study_and_survive_sigkill``:
  the killed trial is failed by heartbeat, retried, and counted once);
* the API process restarted mid-job (SIGTERM, then SIGKILL): a client that retries keeps
  polling and gets the result;
* the PostgreSQL server restarted mid-search: workers and API reconnect, the job succeeds;
* claim races: 8 processes and 100 jobs, every prepare and every finalise done exactly once
  (PostgreSQL ``FOR UPDATE SKIP LOCKED``; SQLite ``BEGIN IMMEDIATE``).

PostgreSQL cases run when ``RANKOPT_TEST_POSTGRES_URL`` is set (each on a scratch database);
the server restart also needs a local cluster that ``pg_ctlcluster`` controls.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from service.artifacts import sha256_file
from service.client import ClientError, RankoptClient
from service.settings import Settings
from service.store import JobStatus, Store
from tensorops import load_compressed
from tests.e2e._claim_race import race
from tests.e2e._procs import (
    POSTGRES_ENV,
    Poller,
    Proc,
    can_restart_postgres,
    ensure_postgres_running,
    free_port,
    pg_ctl,
    pg_wait_ready,
    scratch_postgres,
    start_api,
    start_worker,
    stop_all,
    tails,
)
from tests.worker.pool_support import (
    make_settings,
    storage_of,
    submit,
    train_weights,
    trials_of,
    wait_for,
)
from worker.pool import WORKER_ATTR, Counts

pytestmark = pytest.mark.slow

#: Trials of several epochs of small batches: long enough to be caught running.
SLOW_TRIALS = {"epochs_per_trial": 2, "batch_size": 8}
#: A job as the API takes it: tinycnn on digits, slow trials, a one-epoch finalise.
JOB_SPEC: dict[str, Any] = {
    "arch": "rankopt:tinycnn",
    "dataset": "digits",
    "final_epochs": 1,
    "verify_top": 1,
    "pruner": "none",
    "max_accuracy_drop": 3.0,
    **SLOW_TRIALS,
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_weights(tmp_path_factory)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[tuple[Settings, Store]]:
    settings = make_settings(tmp_path)
    store = Store.from_settings(settings)
    try:
        yield settings, store
    finally:
        store.dispose()


def _debug(procs: list[Proc]) -> None:
    if os.environ.get("FAULTS_DEBUG"):
        print(tails(procs, 400))


def _assert_counted_once(settings: Settings, study_name: str, trials: int) -> None:
    """The study holds exactly ``trials`` counted trials (COMPLETE or PRUNED), each number once."""
    final = trials_of(storage_of(settings), study_name)
    counted = [t.number for t in final if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == trials, [(t.number, t.state.name) for t in final]
    assert len(set(counted)) == len(counted)
    assert len({t.number for t in final}) == len(final)
    assert Counts(final).done == trials


def _assert_artifacts_whole(settings: Settings, store: Store, job_id: str) -> None:
    """Every registered artifact matches its digest and size; nothing partial is left over."""
    root = settings.artifact_root.resolve()
    records = store.list_artifacts(job_id)
    names = {r.name for r in records}
    assert {"model.safetensors", "model.zip", "report.json", "pareto.png"} <= names
    for record in records:
        path = root / record.path
        assert path.is_file(), record
        assert path.stat().st_size == record.size, record.name
        assert sha256_file(path) == record.sha256, record.name
    jobs = root / "jobs"
    # No staging folder of the killed worker, no temporary file (zip_directory writes
    # ``.<name>.*`` and renames it), nothing outside the job's own folder.
    leftovers = [p for p in jobs.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == [], leftovers
    assert [p.name for p in jobs.iterdir()] == [job_id]
    with zipfile.ZipFile(root / "jobs" / job_id / "model.zip") as archive:
        assert archive.testzip() is None
    load_compressed(root / "jobs" / job_id / "model.safetensors")


@pytest.mark.timeout(180)
def test_sigkill_mid_finalise_another_worker_takes_over(
    sqlite_store: tuple[Settings, Store], weights: Path, tmp_path: Path
) -> None:
    settings, store = sqlite_store
    owner = store.create_api_key("alice")[1]
    trials = 3
    # A finalise of a few seconds (several epochs of small batches, an export) so that the
    # kill lands inside it.
    job = submit(
        store,
        settings,
        owner,
        weights,
        trials=trials,
        final_epochs=6,
        batch_size=16,
        exports=["torchscript"],
    )
    staging = settings.artifact_root / "jobs"
    procs = [start_worker(settings, tmp_path, "worker-a"), start_worker(settings, tmp_path, "b")]
    by_id = {p.worker_id: p for p in procs}
    try:

        def finalising() -> object:
            current = store.load_job(job.id)
            if current.terminal:
                raise AssertionError(f"the job ended before the kill: {current.status}")
            if (
                current.status is JobStatus.FINALIZING
                and current.lease_owner in by_id
                and any(staging.glob(f".staging-{job.id}-*"))
            ):
                return current
            return None

        before = wait_for(finalising, 120, "a worker finalising with its staging folder", 0.02)
        victim = by_id[str(before.lease_owner)]
        victim.signal(signal.SIGKILL)
        victim.popen.wait(10)
        survivor = next(p for p in procs if p is not victim)
        # The kill landed mid-phase: the dead worker still holds the lease, nothing published.
        killed = store.load_job(job.id)
        assert killed.status is JobStatus.FINALIZING and killed.lease_owner == victim.worker_id
        assert store.list_artifacts(job.id) == []
        assert any(staging.glob(f".staging-{job.id}-*"))  # its half-written files

        done = wait_for(
            lambda: (j := store.load_job(job.id)).terminal and j, 120, "the job to end", 0.1
        )
        assert done.status is JobStatus.SUCCEEDED, (done.error_code, done.error_message)
        assert survivor.alive()
    except BaseException:
        print(tails(procs))
        raise
    finally:
        stop_all(procs)
        _debug(procs)
    assert done.attempts == 2  # the dead worker's claim, then the takeover
    assert done.result is not None and done.result["finalized_by"] == survivor.worker_id
    assert done.trials_done == trials
    _assert_counted_once(settings, job.study_name, trials)
    _assert_artifacts_whole(settings, store, job.id)


@pytest.mark.timeout(180)
def test_api_restart_mid_job_clients_keep_polling(
    sqlite_store: tuple[Settings, Store], weights: Path, tmp_path: Path
) -> None:
    settings, store = sqlite_store
    key, _ = store.create_api_key("alice")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    trials = 10
    api = start_api(settings, tmp_path, port, "api-1")
    procs: list[Proc] = [
        api,
        start_worker(settings, tmp_path, "a"),
        start_worker(settings, tmp_path, "b"),
    ]
    restarts: list[tuple[str, str, float]] = []  # (signal, job status when killed, outage s)
    try:
        client = RankoptClient(url, key, timeout=10)
        poller = Poller(client, pause=0.05)
        # The first API may still be starting: the poller's retries cover submit's too.
        wait_for(lambda: api.alive() and _ready(url), 60, "the first API")
        job = client.submit({**JOB_SPEC, "trials": trials}, weights)
        poller.until(job["id"], ("SEARCHING",), 120)
        for signum in (signal.SIGTERM, signal.SIGKILL):
            status = poller.get(job["id"], 30)["status"]
            api.signal(signum)
            api.popen.wait(30)
            down = time.monotonic()
            api = start_api(settings, tmp_path, port, f"api-{len(restarts) + 2}")
            procs.append(api)
            seen = poller.unreachable
            poller.get(job["id"], 60)  # rides out the outage
            assert poller.unreachable > seen  # it did meet the outage
            restarts.append((signal.Signals(signum).name, status, time.monotonic() - down))
        final = poller.until(job["id"], (), 150)
        assert final["status"] == "SUCCEEDED", (final, tails(procs))
        result = client.result(job["id"])
        assert result["final"]["accuracy"] is not None
        assert {a["name"] for a in client.artifacts(job["id"])} >= {"model.safetensors"}
        client.close()
    except BaseException:
        print(tails(procs))
        raise
    finally:
        stop_all(procs)
        _debug(procs)
    print(f"restarts: {restarts}; unreachable polls {poller.unreachable}; {poller.statuses}")
    # Both restarts hit the job while it ran, and the client saw it through to the end.
    assert all(status in ("SEARCHING", "FINALIZING") for _, status, _ in restarts), restarts
    assert poller.server_errors == []
    assert poller.statuses[-1] == "SUCCEEDED"
    _assert_counted_once(settings, f"job-{job['id']}", trials)


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def postgres_base() -> str:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    return base


class BackgroundPoller:
    """Polls ``GET /v1/jobs/{id}`` every ``pause`` seconds from a thread and tallies the
    answers: HTTP status (0: no server) and error code."""

    def __init__(self, url: str, key: str, job_id: str, pause: float = 0.05) -> None:
        self.answers: Counter[tuple[int, str]] = Counter()
        self._stop = threading.Event()
        self._client = RankoptClient(url, key, timeout=10)
        self._thread = threading.Thread(target=self._run, args=(job_id, pause), daemon=True)

    def _run(self, job_id: str, pause: float) -> None:
        while not self._stop.wait(pause):
            try:
                self.answers[(200, self._client.get(job_id)["status"])] += 1
            except ClientError as exc:
                self.answers[(exc.status, exc.code)] += 1

    def __enter__(self) -> BackgroundPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
        self._client.close()


@pytest.mark.timeout(240)
def test_postgres_restart_mid_search(postgres_base: str, weights: Path, tmp_path: Path) -> None:
    why = can_restart_postgres(postgres_base)
    if why:
        pytest.skip(why)
    # Enough trials that budget is left when the server is back: trials got faster (sample
    # budgets), and with 10 the budget could all be started before the restart ended.
    trials = 24
    with scratch_postgres(postgres_base) as url:
        settings = make_settings(tmp_path, database_url=url)
        store = Store.from_settings(settings)
        key, _ = store.create_api_key("alice")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        api = start_api(settings, tmp_path, port)
        workers = [start_worker(settings, tmp_path, "a"), start_worker(settings, tmp_path, "b")]
        procs = [api, *workers]
        restarted = 0.0
        try:
            wait_for(lambda: api.alive() and _ready(base), 60, "the API")
            client = RankoptClient(base, key, timeout=10)
            poller = Poller(client, pause=0.1)
            job = client.submit({**JOB_SPEC, "trials": trials}, weights)
            poller.until(job["id"], ("SEARCHING",), 120)
            storage = storage_of(settings)
            study = f"job-{job['id']}"
            # Trials running on both workers when the server goes away.
            wait_for(
                lambda: (
                    {w.worker_id for w in workers}
                    <= {
                        t.user_attrs.get(WORKER_ATTR)
                        for t in trials_of(storage, study)
                        if t.state == TrialState.RUNNING
                    }
                ),
                60,
                "both workers running a trial",
                0.1,
            )
            storage.engine.dispose()
            with BackgroundPoller(base, key, job["id"]) as during:
                started = time.monotonic()
                result = pg_ctl("restart")
                assert result.returncode == 0, result.stderr
                pg_wait_ready(url, 60)
                restarted = time.monotonic() - started
                back = datetime.now()
                time.sleep(0.5)
            final = poller.until(job["id"], (), 180)
            assert final["status"] == "SUCCEEDED", (final, tails(procs))
            assert all(p.alive() for p in procs), tails(procs)
            assert _ready(base)
            client.close()
        except BaseException:
            print(tails(procs))
            raise
        finally:
            ensure_postgres_running(postgres_base)
            stop_all(procs)
            store.dispose()
            _debug(procs)
        print(f"restart took {restarted:.1f}s; API answers meanwhile: {dict(during.answers)}")
        # While the server was down the API answered 503 database_unavailable (never 500, and
        # its process stayed up), and it answered 200 again once the server was back.
        assert {a for a in during.answers if a[0] != 200} <= {(503, "database_unavailable")}
        assert poller.server_errors == [] or set(poller.server_errors) == {
            "503 database_unavailable"
        }
        _assert_counted_once(settings, study, trials)
        # Both workers went on with trials after the restart.
        final_trials = trials_of(storage_of(settings), study)
        after = {
            t.user_attrs.get(WORKER_ATTR)
            for t in final_trials
            if t.datetime_start is not None and t.datetime_start > back
        }
        assert after >= {w.worker_id for w in workers}, [
            (t.number, t.state.name, t.user_attrs.get(WORKER_ATTR), t.datetime_start)
            for t in final_trials
        ]


def _claim_race(url: str, jobs: int, racers: int) -> None:
    store = Store.open(url)
    try:
        owner = store.create_api_key("alice")[1]
        ids = {
            store.create_job(owner.id, {"arch": "x"}, "w.safetensors", trials_total=4).id
            for _ in range(jobs)
        }
    finally:
        store.dispose()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(racers)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=race, args=(url, f"racer-{i}", jobs, barrier, results, 90.0))
        for i in range(racers)
    ]
    for proc in procs:
        proc.start()
    try:
        reports = [results.get(timeout=150) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.exitcode is None:
                proc.kill()
    assert [error for _, _, error in reports if error] == []
    events = [(job_id, kind, attempts) for _, mine, _ in reports for job_id, kind, attempts in mine]
    per_kind = Counter((job_id, kind) for job_id, kind, _ in events)
    prepared = {job_id for job_id, kind in per_kind if kind == "prepare"}
    finalised = {job_id for job_id, kind in per_kind if kind == "finalize"}
    assert prepared == ids and finalised == ids
    assert sorted(per_kind.values()) == [1] * (2 * jobs), per_kind.most_common(3)
    assert {attempts for _, _, attempts in events} == {1}  # no takeover: no lease expired
    assert {kind for _, kind, _ in events} == {"prepare", "finalize"}
    store = Store.open(url)
    try:
        done = [store.load_job(job_id) for job_id in ids]
    finally:
        store.dispose()
    assert {j.status for j in done} == {JobStatus.SUCCEEDED}
    # The racers really raced: more than one of them got work.
    assert sum(1 for _, mine, _ in reports if mine) > 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_claim_races_every_phase_exactly_once(backend: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        _claim_race(f"sqlite:///{tmp_path}/race.db", jobs=100, racers=8)
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    with scratch_postgres(base, "rankopt_race") as url:
        _claim_race(url, jobs=100, racers=8)
