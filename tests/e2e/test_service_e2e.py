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

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.client import RankoptClient
from service.settings import Settings
from service.store import Store
from tensorops import load_compressed
from tests.e2e._procs import free_port
from tests.postgres_support import require_postgres, scratch_database
from tests.worker.pool_support import BASE_SPEC, make_settings, settings_env, train_weights
from worker.data import load_dataset
from worker.training import evaluate

ROOT = Path(__file__).resolve().parents[2]


class Service:
    """The API and two workers as subprocesses, with their logs."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **settings_env(settings), "OMP_NUM_THREADS": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.env = env
        rankopt = [sys.executable, "-m", "worker.cli"]
        commands = {
            "api": [*rankopt, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            "worker-a": [*rankopt, "worker", "--poll-interval", "0.2"],
            "worker-b": [*rankopt, "worker", "--poll-interval", "0.2"],
        }
        self.logs: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for name, command in commands.items():
            self.logs[name] = folder / f"{name}.log"
            with self.logs[name].open("wb") as log:
                self.procs[name] = subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.procs["api"].poll() is None, self.tails()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("the API did not become ready\n" + self.tails())

    def worker_ids(self) -> set[str]:
        host = socket.gethostname()
        return {f"{host}-{self.procs[n].pid}-0" for n in ("worker-a", "worker-b")}

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            for name, path in self.logs.items()
            if path.exists()
        )


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
