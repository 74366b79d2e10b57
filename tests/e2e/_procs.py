"""Helpers of the fault tests: ``rankopt serve``/``rankopt worker`` subprocesses with their logs
(on the shared harness :mod:`service.procs`),
a polling client that rides out outages, scratch PostgreSQL databases and server restarts."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from service import procs
from service.client import ClientError, RankoptClient
from service.procs import Proc, rankopt_env
from service.procs import free_port as free_port  # re-exported for the tests
from service.procs import stop_all as stop_all
from service.procs import tails as tails
from service.settings import Settings
from tests.worker.pool_support import settings_env

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_ENV = "RANKOPT_TEST_POSTGRES_URL"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def process_env(settings: Settings) -> dict[str, str]:
    return rankopt_env(settings_env(settings), ROOT)


def start(name: str, settings: Settings, folder: Path, *args: str) -> Proc:
    """``rankopt *args`` on ``settings``, logging to a fresh file in ``folder``."""
    log = folder / f"{name}-{uuid.uuid4().hex[:6]}.log"
    return Proc(name, args, env=process_env(settings), log=log, cwd=ROOT)


def start_worker(settings: Settings, folder: Path, name: str = "worker") -> Proc:
    return start(name, settings, folder, "worker", "--poll-interval", "0.2")


def start_api(settings: Settings, folder: Path, port: int, name: str = "api") -> Proc:
    return start(
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
    procs.wait_ready(url, [proc], timeout)


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
