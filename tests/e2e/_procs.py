"""Helpers of the fault tests: ``rankopt serve``/``rankopt worker`` subprocesses with their logs,
a polling client that rides out outages, scratch PostgreSQL databases and server restarts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from service.client import ClientError, RankoptClient
from service.settings import Settings
from tests.worker.pool_support import settings_env

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_ENV = "RANKOPT_TEST_POSTGRES_URL"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, **settings_env(settings), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class Proc:
    """One ``rankopt`` subprocess (``python -m worker.cli ...``) logging to a file."""

    def __init__(self, name: str, settings: Settings, folder: Path, *args: str) -> None:
        self.name = name
        self.log = folder / f"{name}-{uuid.uuid4().hex[:6]}.log"
        with self.log.open("wb") as handle:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", *args],
                cwd=ROOT,
                env=process_env(settings),
                stdout=handle,
                stderr=subprocess.STDOUT,
            )

    @property
    def worker_id(self) -> str:
        return f"{socket.gethostname()}-{self.popen.pid}-0"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit status."""
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        return self.popen.returncode

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return f"--- {self.name} (pid {self.popen.pid}) ---\n" + "\n".join(text[-lines:])


def start_worker(settings: Settings, folder: Path, name: str = "worker") -> Proc:
    return Proc(name, settings, folder, "worker", "--poll-interval", "0.2")


def start_api(settings: Settings, folder: Path, port: int, name: str = "api") -> Proc:
    return Proc(
        name,
        settings,
        folder,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    )


def wait_ready(url: str, proc: Proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.alive(), proc.tail()
        with suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"the API at {url} did not become ready\n{proc.tail()}")


def stop_all(procs: list[Proc]) -> None:
    for proc in procs:
        proc.signal(signal.SIGTERM)
    for proc in procs:
        proc.stop()


def tails(procs: list[Proc], lines: int = 40) -> str:
    return "\n".join(proc.tail(lines) for proc in procs)


class Poller:
    """Polls ``GET /v1/jobs/{id}`` like a patient client: a request that finds no server
    (``ClientError`` with status 0) or a 5xx answer is retried after ``pause`` seconds."""

    def __init__(self, client: RankoptClient, pause: float = 0.1) -> None:
        self.client = client
        self.pause = pause
        self.unreachable = 0  # requests that found no server
        self.server_errors: list[str] = []  # 5xx answers
        self.statuses: list[str] = []  # every status seen, in order

    def get(self, job_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                job = self.client.get(job_id)
            except ClientError as exc:
                if exc.status == 0:
                    self.unreachable += 1
                elif exc.status >= 500:
                    self.server_errors.append(f"{exc.status} {exc.code}")
                else:
                    raise
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"no answer for job {job_id} in {timeout}s: {exc}"
                    ) from exc
                time.sleep(self.pause)
                continue
            if not self.statuses or self.statuses[-1] != job["status"]:
                self.statuses.append(job["status"])
            return dict(job)

    def until(self, job_id: str, statuses: tuple[str, ...], timeout: float) -> dict[str, Any]:
        """Poll until the job's status is one of ``statuses`` (or terminal)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id, max(1.0, deadline - time.monotonic()))
            if job["status"] in statuses or job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(self.pause)


# ---------------------------------------------------------------------- PostgreSQL
def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def scratch_postgres(base_url: str, prefix: str = "rankopt_fault") -> Iterator[str]:
    """A fresh database on the server of ``base_url`` for the duration; dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_conninfo(base_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        pg_wait_ready(base_url, 60)
        with psycopg.connect(_conninfo(base_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_address(url: str) -> tuple[str, str]:
    parsed = make_url(url)
    return parsed.host or "127.0.0.1", str(parsed.port or 5432)


def pg_is_ready(url: str) -> bool:
    host, port = _pg_address(url)
    return (
        subprocess.run(
            ["pg_isready", "-q", "-h", host, "-p", port], check=False, timeout=10
        ).returncode
        == 0
    )


def pg_wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pg_is_ready(url):
        if time.monotonic() > deadline:
            raise AssertionError(f"PostgreSQL at {_pg_address(url)} is not ready after {timeout}s")
        time.sleep(0.2)


def pg_clusters() -> list[str]:
    """Versions of the local clusters (``/etc/postgresql/<version>/main``)."""
    root = Path("/etc/postgresql")
    return sorted(p.name for p in root.iterdir() if (p / "main").is_dir()) if root.is_dir() else []


def can_restart_postgres(url: str) -> str | None:
    """Why this machine cannot restart the server of ``url`` (None when it can)."""
    host, _ = _pg_address(url)
    if host not in ("127.0.0.1", "localhost", "::1"):
        return f"PostgreSQL at {host} is not local"
    if shutil.which("pg_ctlcluster") is None or not pg_clusters():
        return "pg_ctlcluster or a local cluster under /etc/postgresql is missing"
    return None


def pg_ctl(action: str) -> subprocess.CompletedProcess[str]:
    """``pg_ctlcluster <version> main <action>`` for every local cluster."""
    result = subprocess.CompletedProcess[str]([], 0, "", "")
    for version in pg_clusters():
        result = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            return result
    return result


def ensure_postgres_running(url: str) -> None:
    """Start the local server again if it does not answer (after a failed restart)."""
    if pg_is_ready(url):
        return
    pg_ctl("start")
    pg_wait_ready(url, 60)
