"""Start ``rankopt`` processes on this machine and stop them: the one harness of the demo
(``worker/demo.py``), the end-to-end tests (``tests/e2e``) and ``bench/bench_service.py``.

A free port, one subprocess per ``rankopt`` command logging to a file, waiting until the API
answers ``/readyz`` and stopping every process (SIGTERM, then SIGKILL). Imports no torch: the
processes are started as ``python -m worker.cli ...`` by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path

import httpx

__all__ = [
    "RANKOPT",
    "HarnessError",
    "Proc",
    "free_port",
    "rankopt_env",
    "stop_all",
    "tails",
    "wait_for_log",
    "wait_ready",
]

#: The ``rankopt`` console script, run with this interpreter.
RANKOPT: tuple[str, ...] = (sys.executable, "-m", "worker.cli")


class HarnessError(RuntimeError):
    """A started process exited early or did not become ready in time."""

    code = "harness_error"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def rankopt_env(
    variables: Mapping[str, str], root: Path | None = None, *, threads: int = 1
) -> dict[str, str]:
    """This process's environment plus ``variables``, ``OMP_NUM_THREADS=threads`` and, when
    ``root`` is given, ``root`` first on ``PYTHONPATH`` (to run a checkout's code)."""
    env = {**os.environ, **variables, "OMP_NUM_THREADS": str(threads)}
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


class Proc:
    """One ``rankopt`` subprocess (``python -m worker.cli *args``) logging to ``log``;
    ``command`` replaces ``python -m worker.cli`` (e.g. a traced launcher in a benchmark)."""

    def __init__(
        self,
        name: str,
        args: Iterable[str],
        *,
        env: Mapping[str, str],
        log: Path,
        cwd: Path | None = None,
        append: bool = False,
        preexec_fn: Callable[[], None] | None = None,
        command: Sequence[str] = RANKOPT,
    ) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab" if append else "wb") as handle:
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                [*command, *args],
                cwd=cwd,
                env=dict(env),
                stdout=handle,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec_fn,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def worker_id(self) -> str:
        """The id a ``rankopt worker`` process gives its first slot."""
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


def tails(procs: Iterable[Proc], lines: int = 40) -> str:
    """The last ``lines`` of every process's log."""
    return "\n".join(proc.tail(lines) for proc in procs)


def stop_all(procs: Iterable[Proc], timeout: float = 30) -> None:
    """SIGTERM to every process at once, then wait for each (SIGKILL after ``timeout``)."""
    procs = list(procs)
    for proc in procs:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.stop(max(deadline - time.monotonic(), 0.1))


def wait_ready(url: str, procs: Iterable[Proc], timeout: float = 60, pause: float = 0.1) -> None:
    """Return once ``url/readyz`` answers 200; HarnessError when a process exits first or the
    time runs out (the message ends with the processes' logs)."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [proc.name for proc in procs if not proc.alive()]
        if dead:
            raise HarnessError(f"{', '.join(dead)} exited at start-up\n{tails(procs)}")
        with suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(pause)
    raise HarnessError(f"the API at {url} did not become ready in {timeout:.0f}s\n{tails(procs)}")


def wait_for_log(proc: Proc, marker: str, timeout: float) -> None:
    """Return once ``marker`` appears in the process's log; HarnessError when it exits first or
    the time runs out."""
    deadline = time.monotonic() + timeout
    while marker not in (proc.log.read_text(errors="replace") if proc.log.exists() else ""):
        if not proc.alive() or time.monotonic() > deadline:
            raise HarnessError(f"{proc.name} did not log {marker!r}\n{proc.tail()}")
        time.sleep(0.1)
