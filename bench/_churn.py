"""The fault benchmarks of ``bench/bench_service.py --churn`` (issue 19).

* **Start-up**: the seconds from a ``rankopt worker`` process's start to its first trial of a
  job that is already searching (the ``trial_started`` line in its log), for the code of this
  checkout and for another checkout (``--before ROOT``, e.g. ``git archive 545cc9e``), started
  alternately on the same database.
* **Churn**: ``--churn-workers`` workers and ``--churn-jobs`` small jobs on PostgreSQL (through
  a TCP proxy that this script cuts once for longer than twice the trial heartbeat); every
  ``--kill-every`` seconds one worker that has finished starting (it logged ``worker_started``)
  is SIGKILLed and a fresh one started; the API SIGKILLed once and restarted. Reported: jobs
  SUCCEEDED out of submitted, worker kills, API kills, outages, the trials that failed while
  their worker was alive, by how they ended there (:func:`_ending`; ``ran_twice`` is a
  duplicated trial) and the total time, next to the same jobs without faults.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.procs import Proc, free_port, rankopt_env, wait_for_log, wait_ready

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.pg_proxy import proxied  # noqa: E402  (the proxy the fault tests cut)

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
TRIAL_HEARTBEAT_S = 2.0
FAULT_ENV = {
    "RANKOPT_TRIAL_HEARTBEAT_SECONDS": str(TRIAL_HEARTBEAT_S),
    "RANKOPT_LEASE_SECONDS": "15",
    "RANKOPT_HEARTBEAT_SECONDS": "3",
    "RANKOPT_MAX_TRIAL_FAILURES": "20",
}


def _start(run: Any, name: str, args: tuple[str, ...], root: Path, url: str) -> Proc:
    env = rankopt_env({**run.env_vars(url), **FAULT_ENV}, root)
    proc = Proc(name, args, env=env, log=run.folder / f"{name}.log", cwd=root, preexec_fn=_nice)
    run.procs.append(proc)
    return proc


def _nice() -> None:
    os.nice(int(os.environ.get("BENCH_NICE", "10")))


def _worker(run: Any, name: str, root: Path, url: str) -> Proc:
    return _start(run, name, ("worker", "--poll-interval", "0.2"), root, url)


def bench_startup(
    run: Any, weights: Path, spec: dict[str, Any], queue: Callable[..., Any], roots: list[Path]
) -> dict[str, list[float]]:
    """Seconds from process start to first trial claimed, per code root, alternately."""
    store, job_id, _, _ = queue(run, weights, {**spec, "trials": 10_000})
    first = _worker(run, "w-first", ROOT, run.database_url)
    _wait(lambda: store.load_job(job_id).status.value == "SEARCHING", 300, first)
    times: dict[str, list[float]] = {str(r): [] for r in roots}
    for attempt in range(int(os.environ.get("BENCH_STARTS", "2"))):
        for root in roots if attempt % 2 == 0 else roots[::-1]:  # alternate who goes first
            began = time.monotonic()
            proc = _worker(run, f"w-{attempt}-{root.name}", root, run.database_url)
            wait_for_log(proc, " trial_started: ", 300)
            times[str(root)].append(round(time.monotonic() - began, 1))
            proc.stop()
            loaded = re.search(r"context_ready: .* seconds=([0-9.]+)", _text(proc))
            times[f"{root} context_ready"] = [
                *times.get(f"{root} context_ready", []),
                float(loaded.group(1)) if loaded else -1.0,
            ]
    store.dispose()
    return times


def _wait(condition: Callable[[], bool], timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or not proc.alive():
            raise RuntimeError(f"timed out\n{proc.tail()}")
        time.sleep(0.5)


def bench_churn(
    run: Any,
    weights: Path,
    spec: dict[str, Any],
    queue: Callable[..., Any],
    *,
    jobs: int,
    workers: int,
    kill_every: float | None,
    timeout: float,
) -> dict[str, Any]:
    """``jobs`` jobs on ``workers`` workers, with faults unless ``kill_every`` is None."""
    from optuna.trial import TrialState

    from service.client import ClientError, RankoptClient
    from worker.pool import WORKER_ATTR

    outage = 2 * TRIAL_HEARTBEAT_S + 2
    with proxied(run.database_url) as (proxy, url):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve = ("serve", "--port", str(port), "--log-level", "warning")
        api = _start(run, "api-0", serve, ROOT, url)
        pool = [_worker(run, f"w{i}", ROOT, url) for i in range(workers)]
        store, first, key, _ = queue(run, weights, spec)
        ids = [first] + [queue(run, weights, spec)[1] for _ in range(jobs - 1)]
        began = time.monotonic()
        wait_ready(base, [api], 120)
        client = RankoptClient(base, key, timeout=10)
        killed: set[str] = set()
        api_kills = outages = 0
        last_kill = time.monotonic()
        status: dict[str, str] = {}
        while time.monotonic() - began < timeout:
            status = {j: store.load_job(j).status.value for j in ids}
            if all(s in TERMINAL for s in status.values()):
                break
            now = time.monotonic()
            if kill_every is not None and now - last_kill >= kill_every:
                started = [w for w in pool if " worker_started: " in _text(w)]
                if started:
                    victim = started[0]
                    victim.signal(signal.SIGKILL)
                    victim.popen.wait(10)
                    killed.add(victim.worker_id)
                    pool.remove(victim)
                    pool.append(_worker(run, f"w{len(run.procs)}", ROOT, url))
                    last_kill = now
                    if not api_kills:
                        api.signal(signal.SIGKILL)
                        api.popen.wait(10)
                        api = _start(run, "api-1", serve, ROOT, url)
                        api_kills = 1
                    elif not outages:
                        proxy.cut()
                        time.sleep(outage)
                        proxy.resume()
                        outages = 1
            with contextlib.suppress(ClientError):  # the API may be restarting
                client.get(ids[0])
            time.sleep(0.5)
        elapsed = time.monotonic() - began
        client.close()
        storage = _storage(run.database_url)
        logs = "\n".join(_text(p) for p in run.procs)
        live_failures: dict[str, int] = {}
        counted_ok = 0
        for job_id in ids:
            trials = _trials(storage, f"job-{job_id}")
            for t in trials:
                worker = t.user_attrs.get(WORKER_ATTR)
                if t.state == TrialState.FAIL and worker not in killed:
                    how = _ending(logs, worker, job_id, t.number)
                    live_failures[how] = live_failures.get(how, 0) + 1
            counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            counted_ok += len(counted) == spec["trials"]
        storage.engine.dispose()
        errors = {
            j: (r.error_code, r.error_message)
            for j in ids
            if (r := store.load_job(j)).status.value == "FAILED"
        }
        store.dispose()
    return {
        "faults": kill_every is not None,
        "jobs": jobs,
        "succeeded": sum(1 for s in status.values() if s == "SUCCEEDED"),
        "statuses": status,
        "studies_with_exact_budget": counted_ok,
        "worker_kills": len(killed),
        "api_kills": api_kills,
        "db_outages": outages,
        "outage_s": outage if outages else 0,
        "duplicated_trials": live_failures.get("ran_twice", 0),
        "failed_while_worker_lived": live_failures,
        "seconds": round(elapsed, 1),
        "errors": errors,
    }


def _ending(logs: str, worker: str | None, job_id: str, number: int) -> str:
    """How a trial that FAILed while its worker lived ended on that worker, from its log:
    ``ran_twice`` (it ran to its end there: complete, pruned, failed or error, while its
    retry runs it again), ``abandoned`` (the worker learnt it was reaped and stopped it),
    ``interrupted`` (stopped by an outage or a shutdown and queued again) or ``no_end_logged``."""
    found = re.search(
        rf"\[{re.escape(str(worker))}\] job={job_id} trial_finished: trial {number} (\w+)", logs
    )
    if found is None:
        return "no_end_logged"
    kind = found.group(1)
    if kind in ("complete", "pruned", "failed", "error"):
        return "ran_twice"
    return {"reaped": "abandoned", "stopped": "interrupted"}.get(kind, kind)


def _text(proc: Proc) -> str:
    return proc.log.read_text(errors="replace") if proc.log.exists() else ""


def _storage(url: str) -> Any:
    import optuna

    from service.store import normalize_url

    return optuna.storages.RDBStorage(normalize_url(url).render_as_string(hide_password=False))


def _trials(storage: Any, name: str) -> list[Any]:
    try:
        return list(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
    except KeyError:
        return []
