"""The whole service as a user runs it: ``rankopt serve`` and two ``rankopt worker`` processes on
one database, driven over HTTP on 127.0.0.1 by the Python client and the CLI.

Every test runs twice: on a SQLite file, and on a fresh PostgreSQL database (created for the
test and dropped after it) when ``RANKOPT_TEST_POSTGRES_URL`` names a server; without one the
PostgreSQL cases are skipped with the reason.

Submit → both workers run trials of the job's one study → SUCCEEDED → download (digest checked)
→ the checkpoint loads in one call and reproduces the reported accuracy. Then a second job is
cancelled over HTTP while it searches, and the CLI's ``status``/``list`` read the same jobs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import RankoptClient
from service.procs import Proc, free_port, stop_all, tails, wait_ready
from service.settings import Settings
from service.store import Store
from tensorops import load_compressed
from tests.e2e._procs import ROOT, process_env
from tests.postgres_support import require_postgres, scratch_database
from tests.worker.pool_support import BASE_SPEC, make_settings, train_weights
from worker.data import load_dataset
from worker.training import evaluate


class Service:
    """The API and two workers as subprocesses, with their logs."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = process_env(settings)
        commands = {
            "api": ["serve", "--host", "127.0.0.1", "--port", str(self.port)],
            "worker-a": ["worker", "--poll-interval", "0.2"],
            "worker-b": ["worker", "--poll-interval", "0.2"],
        }
        self.procs = {
            name: Proc(name, args, env=self.env, log=folder / f"{name}.log", cwd=ROOT)
            for name, args in commands.items()
        }

    def wait_ready(self, timeout: float = 60) -> None:
        wait_ready(self.url, self.procs.values(), timeout, pause=0.2)

    def worker_ids(self) -> set[str]:
        return {self.procs[n].worker_id for n in ("worker-a", "worker-b")}

    def stop(self) -> None:
        stop_all(self.procs.values())

    def tails(self, lines: int = 30) -> str:
        return tails(self.procs.values(), lines)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLite file, or a PostgreSQL database created for the test and dropped after it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/pool.db"
        return
    require_postgres()
    with scratch_database("rankopt_e2e") as url:
        yield url


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[tuple[Service, Settings, str]]:
    settings = make_settings(tmp_path, database_url=database_url)
    store = Store.from_settings(settings, migrate=True)
    key, _ = store.create_api_key("e2e")
    store.dispose()
    svc = Service(settings, tmp_path)
    try:
        svc.wait_ready()
        yield svc, settings, key
    finally:
        svc.stop()


def test_submit_search_with_two_workers_download_and_load(
    service: tuple[Service, Settings, str],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    svc, _, key = service
    weights = train_weights(tmp_path_factory)
    spec = {**BASE_SPEC, "trials": 8, "epochs_per_trial": 2}
    with RankoptClient(svc.url, key, timeout=30) as client:
        job = client.submit(spec, weights, idempotency_key="e2e-1")
        assert job["status"] == "QUEUED"
        again = client.submit(spec, weights, idempotency_key="e2e-1")
        assert again["id"] == job["id"]  # a retried submission is the same job

        events = list(client.events(job["id"]))
        assert events[-1]["event"] == "end", svc.tails()
        final = events[-1]["data"]
        assert final["status"] == "SUCCEEDED", (final, svc.tails())
        seen = {e["data"]["status"] for e in events}
        assert "SEARCHING" in seen

        trials = client.trials(job["id"])
        counted = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
        assert len(counted) == spec["trials"]
        assert {t["worker"] for t in counted} == svc.worker_ids(), svc.tails()

        result = client.result(job["id"])
        names = {a["name"] for a in client.artifacts(job["id"])}
        assert {"model.safetensors", "model.zip", "report.json", "pareto.png"} <= names
        path = client.download(job["id"], "model.safetensors", tmp_path / "model.safetensors")
    model = load_compressed(path)
    accuracy = evaluate(model, load_dataset("digits"), device="cpu").accuracy
    assert accuracy == result["final"]["accuracy"]
    assert result["final"]["accuracy_drop"] <= spec["max_accuracy_drop"]

    listed = subprocess.run(
        [sys.executable, "-m", "worker.cli", "status", job["id"], "--json"],
        cwd=ROOT,
        env={**svc.env, "RANKOPT_URL": svc.url, "RANKOPT_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert '"SUCCEEDED"' in listed.stdout


def test_cancel_a_searching_job_over_http(
    service: tuple[Service, Settings, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    svc, _, key = service
    weights = train_weights(tmp_path_factory)
    spec = {**BASE_SPEC, "trials": 200, "epochs_per_trial": 3}
    with RankoptClient(svc.url, key, timeout=30) as client:
        job = client.submit(spec, weights)
        deadline = time.monotonic() + 120
        while client.get(job["id"])["status"] != "SEARCHING":
            assert time.monotonic() < deadline, svc.tails()
            time.sleep(0.2)
        cancelled_at = time.monotonic()
        assert client.cancel(job["id"])["status"] in ("CANCELLING", "CANCELLED")
        assert client.cancel(job["id"])["status"] in ("CANCELLING", "CANCELLED")  # idempotent
        while client.get(job["id"])["status"] != "CANCELLED":
            assert time.monotonic() - cancelled_at < 60, svc.tails()
            time.sleep(0.2)
        done = client.get(job["id"])["progress"]["trials_done"]
        assert done < spec["trials"]
        client.delete(job["id"])
        assert all(j["id"] != job["id"] for j in client.list()["jobs"])
