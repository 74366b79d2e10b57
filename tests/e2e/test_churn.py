"""Every fault at once, on real processes and PostgreSQL: worker churn, an API kill and a
database outage longer than twice the trial heartbeat, while a few small jobs search.

* three ``rankopt worker`` processes; every few seconds one that is running a trial is
  SIGKILLed and a fresh one started in its place;
* the API SIGKILLed once and started again (the client rides out the gap);
* the database cut for longer than 2x the trial heartbeat while trials run.

The outage is a TCP proxy between the processes and PostgreSQL (:mod:`tests.pg_proxy`), cut and
resumed, rather than ``pg_ctlcluster restart`` (``test_faults.py`` covers a real restart): the
server is shared by the rest of the suite and by anything else on the machine, and a restart
*held* for seconds would fail their connections too. For the processes under test the two look
the same: every connection drops and new ones are refused until the database is back.

Then every job SUCCEEDED, every study holds exactly its budget of counted trials, no trial ran
twice (a trial failed while its worker was alive was never run to its end there), every retried
trial is a failed one, and every artifact matches its digest.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from service.artifacts import sha256_file
from service.client import RankoptClient
from service.settings import Settings
from service.store import Store
from tests.e2e._procs import (
    Poller,
    Proc,
    free_port,
    scratch_postgres,
    start_api,
    start_worker,
    stop_all,
    tails,
    wait_ready,
)
from tests.pg_proxy import proxied
from tests.postgres_support import require_postgres
from tests.worker.pool_support import make_settings, storage_of, train_weights, trials_of
from worker.pool import WORKER_ATTR, Counts

pytestmark = pytest.mark.slow

JOBS = 2
TRIALS = 4
WORKERS = 3
#: Seconds between two worker kills, and the most kills in one run.
KILL_EVERY = 4.0
MAX_KILLS = 4
TRIAL_HEARTBEAT = 2.0
#: The database outage: longer than twice the trial heartbeat.
OUTAGE = 5.0
#: Seconds the jobs may take (on 2 loaded cores, with the workers restarting).
DEADLINE = float(os.environ.get("RANKOPT_CHURN_DEADLINE", "420"))
SPEC: dict[str, Any] = {
    "arch": "rankopt:tinycnn",
    "dataset": "digits",
    "trials": TRIALS,
    "epochs_per_trial": 2,
    "batch_size": 8,
    "final_epochs": 1,
    "verify_top": 1,
    "pruner": "none",
    "max_accuracy_drop": 3.0,
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_weights(tmp_path_factory)


class Churn:
    """The processes under test and what was done to them."""

    def __init__(self, settings: Settings, direct: Settings, folder: Path, port: int) -> None:
        self.settings = settings
        self.direct = direct  # the same database, not through the proxy
        self.folder = folder
        self.port = port
        self.workers = [start_worker(settings, folder, f"w{i}") for i in range(WORKERS)]
        self.api = start_api(settings, folder, port, "api-0")
        self.procs: list[Proc] = [self.api, *self.workers]
        self.killed: set[str] = set()  # worker ids
        self.api_kills = 0
        self.outages = 0

    def running_trials(self, studies: list[str]) -> dict[str, int]:
        """Live workers' ids -> a trial number each is running."""
        storage = storage_of(self.direct)
        try:
            running = {
                str(t.user_attrs.get(WORKER_ATTR)): t.number
                for study in studies
                for t in trials_of(storage, study)
                if t.state == TrialState.RUNNING
            }
        finally:
            storage.engine.dispose()
        return {w.worker_id: running[w.worker_id] for w in self.workers if w.worker_id in running}

    def kill_a_worker(self, studies: list[str]) -> bool:
        busy = self.running_trials(studies)
        victim = next((w for w in self.workers if w.worker_id in busy), None)
        if victim is None:
            return False
        victim.signal(signal.SIGKILL)
        victim.popen.wait(10)
        self.killed.add(victim.worker_id)
        self.workers.remove(victim)
        fresh = start_worker(self.settings, self.folder, f"w{len(self.procs)}")
        self.workers.append(fresh)
        self.procs.append(fresh)
        return True

    def kill_the_api(self) -> None:
        self.api.signal(signal.SIGKILL)
        self.api.popen.wait(10)
        self.api = start_api(self.settings, self.folder, self.port, f"api-{self.api_kills + 1}")
        self.procs.append(self.api)
        self.api_kills += 1


@pytest.mark.timeout(600)
def test_jobs_succeed_through_worker_churn_an_api_kill_and_a_database_outage(
    weights: Path, tmp_path: Path
) -> None:
    base = require_postgres()
    started = time.monotonic()
    with scratch_postgres(base, "rankopt_churn") as direct, proxied(direct) as (proxy, url):
        settings = make_settings(
            tmp_path,
            database_url=url,
            # Phase leases outlive the outage; a killed worker's lease expires in seconds.
            lease_seconds=6.0,
            heartbeat_seconds=1.0,
            trial_heartbeat_seconds=TRIAL_HEARTBEAT,
        )
        direct_settings = settings.model_copy(update={"database_url": direct})
        store = Store.from_settings(direct_settings)
        key, _ = store.create_api_key("alice")
        port = free_port()
        churn = Churn(settings, direct_settings, tmp_path, port)
        try:
            client = RankoptClient(f"http://127.0.0.1:{port}", key, timeout=10)
            poller = Poller(client, pause=0.2)
            wait_ready(f"http://127.0.0.1:{port}", churn.api, 120)
            jobs = [str(client.submit(SPEC, weights)["id"]) for _ in range(JOBS)]
            studies = [f"job-{j}" for j in jobs]
            last_kill = time.monotonic()
            pending = set(jobs)
            while pending:
                assert time.monotonic() - started < DEADLINE, "the jobs did not end in time"
                for job_id in list(pending):
                    if poller.get(job_id, 60)["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                        pending.discard(job_id)
                now = time.monotonic()
                due = len(churn.killed) < MAX_KILLS and now - last_kill >= KILL_EVERY
                if due and churn.kill_a_worker(studies):
                    last_kill = now
                    if len(churn.killed) == 1:
                        churn.kill_the_api()
                if not churn.outages and churn.killed and churn.running_trials(studies):
                    proxy.cut()
                    time.sleep(OUTAGE)
                    proxy.resume()
                    churn.outages += 1
                time.sleep(0.3)
            finals = {j: poller.get(j, 60) for j in jobs}
            client.close()
        except BaseException:
            print(tails(churn.procs, 80))
            raise
        finally:
            stop_all(churn.procs)
        print(
            f"{len(churn.killed)} worker kills, {churn.api_kills} API kill, {churn.outages} "
            f"outage of {OUTAGE}s, {time.monotonic() - started:.0f}s in all"
        )
        assert {j: f["status"] for j, f in finals.items()} == dict.fromkeys(jobs, "SUCCEEDED"), (
            finals,
            tails(churn.procs, 80),
        )
        # The faults did happen while trials ran.
        assert churn.killed and churn.api_kills == 1 and churn.outages == 1
        storage = storage_of(direct_settings)
        try:
            logs = "\n".join(p.log.read_text(errors="replace") for p in churn.procs)
            for study in studies:
                _assert_study(trials_of(storage, study), churn.killed, study, logs)
        finally:
            storage.engine.dispose()
        for job_id in jobs:
            _assert_artifacts(direct_settings, store, job_id)
        store.dispose()


def _assert_study(trials: list[Any], killed: set[str], study: str, logs: str) -> None:
    """Exactly the budget counted; no trial ran twice: a trial that failed while its worker
    lived (abandoned in an outage, then reaped) was not run to its end on that worker (it may
    have been abandoned there, ``reaped`` or ``stopped``, once the worker learnt of it)."""
    described = [(t.number, t.state.name, t.user_attrs.get(WORKER_ATTR)) for t in trials]
    counted = [t.number for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == TRIALS, described
    assert Counts(trials).done == TRIALS, described
    assert len({t.number for t in trials}) == len(trials)
    failed = {t.number: t.user_attrs.get(WORKER_ATTR) for t in trials if t.state == TrialState.FAIL}
    job = study.removeprefix("job-")
    alive = {n: w for n, w in failed.items() if w not in killed}
    ran_on = [
        (n, w)
        for n, w in alive.items()
        if re.search(
            rf"\[{w}\] job={job} trial_finished: trial {n} (complete|pruned|failed|error)", logs
        )
    ]
    assert ran_on == [], (ran_on, described)  # reaped while its worker still ran it
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    assert retried <= set(failed), described
    assert not [t for t in trials if t.state == TrialState.RUNNING], described


def _assert_artifacts(settings: Settings, store: Store, job_id: str) -> None:
    root = settings.artifact_root.resolve()
    records = store.list_artifacts(job_id)
    assert {"model.safetensors", "report.json"} <= {r.name for r in records}
    for record in records:
        path = root / record.path
        assert path.is_file(), record
        assert path.stat().st_size == record.size, record.name
        assert sha256_file(path) == record.sha256, record.name
