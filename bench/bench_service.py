"""Benchmark the REST service and the worker pool as deployed: real processes on loopback.

Usage::

    .venv/bin/python bench/bench_service.py [--quick] [--duration 30] [--rate 500]
        [--workers 1 2 [4 ...]] [--trials 40] [--database-url URL] [--arch rankopt:lenet5]
        [--dataset mnist5k] [--epochs-per-trial 3] [--polling-workers 2] [--worker-nice 0]
        [--skip-polling] [--skip-throughput] [--out bench/results]

Two measurements, each on a fresh database (SQLite file by default; with ``--database-url
postgresql://user@host:port/db`` a scratch database is created on that server for each run and
dropped afterwards) and a fresh artifact folder:

* **Status polling** (goal: p99 <= 20 ms and zero errors at 500 requests/s for 30 s):
  ``rankopt serve`` (one uvicorn process) and two ``rankopt worker`` processes; a job with an
  unbounded trial budget keeps both workers training throughout. Once it is SEARCHING, this
  script sends ``GET /v1/jobs/{id}`` (with the API key, as a client polls) on an *open-loop*
  schedule: request *i* is due at ``t0 + i/rate`` whatever happened to the earlier ones, and
  its latency is counted from that due time (queueing in the client included, so a stalled
  server cannot hide behind fewer requests). The client is a small asyncio HTTP/1.1 client
  over keep-alive connections (up to 64), cheap enough not to steal the server's CPU; a
  connection the server closed while idle is reopened and the request sent again (counted as
  a reconnect, not an error). Errors are non-200 answers, timeouts (5 s) and connection
  failures. The first 2 s are a warm-up at the same rate and are not counted.
* **Trial throughput** (goal: 2 workers >= 1.8x the trials per minute of 1 worker): for each
  count in ``--workers`` (default 1 2), that many single-threaded ``rankopt worker`` processes
  (``OMP_NUM_THREADS=1``) run one job of ``--trials`` trials (default 40; ``arch`` on
  ``dataset``, ``--epochs-per-trial`` fine-tuning epochs per trial (default 3, the job spec's
  default), no pruner, so trials are alike). The rate is
  counted trials (COMPLETE or PRUNED) per minute of the SEARCHING phase: from the moment the
  prepare phase ended (``search_started_at``) to the end of the last counted trial, from the
  trial timestamps in the study; it therefore includes the time a joining worker needs to load
  the job. The steady-state rate (from the moment every worker had started a trial) is shown
  next to it. On a machine with more cores (or GPUs), pass ``--workers 1 2 4 8``.

Every worker process is single-threaded (``OMP_NUM_THREADS=1``, so torch uses one intra-op
thread): on this 2-core machine two workers use the two cores. The load average is printed
before and after each measurement; other processes on the machine skew both numbers.

Prints markdown tables and writes ``<out>/service[_quick].json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _common import cpu_pressure, machine_info, markdown_table, versions

from service.procs import Proc, free_port, rankopt_env, stop_all, tails, wait_for_log, wait_ready

ROOT = Path(__file__).resolve().parents[1]
P99_GOAL_MS = 20.0
SPEEDUP_GOAL = 1.8
WARMUP_S = 2.0
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT_S = 5.0
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
SPLIT_SEED = 0  # the data split of the trained weights and of every job


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def fmt_load(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values) or "-"


# ---------------------------------------------------------------------- processes
def cpu_seconds(proc: Proc) -> float:
    """User + system CPU seconds of the process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cluster:
    """A database, an artifact folder and the processes running on them."""

    folder: Path
    database_url: str
    procs: list[Proc] = field(default_factory=list)
    # how a process is started: `python <launcher> <args>` (bench_scaleout.py traces it)
    launcher: list[str] = field(default_factory=lambda: ["-m", "worker.cli"])

    def env_vars(self, database_url: str | None = None) -> dict[str, str]:
        return {
            "RANKOPT_DATABASE_URL": database_url or self.database_url,
            "RANKOPT_ARTIFACT_ROOT": str(self.folder / "artifacts"),
            "RANKOPT_DEVICE": "cpu",
            "MKL_NUM_THREADS": "1",
        }

    @property
    def env(self) -> dict[str, str]:
        return rankopt_env(self.env_vars(), ROOT)

    def settings(self) -> Any:
        from service.settings import Settings

        return Settings(database_url=self.database_url, artifact_root=self.folder / "artifacts")

    def start(
        self,
        name: str,
        *args: str,
        nice: int = 0,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        log = self.folder / f"{name}.log"

        def setup() -> None:
            if nice:
                os.nice(nice)
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        proc = Proc(
            name,
            args,
            env={**self.env, **(env or {})},
            log=log,
            cwd=ROOT,
            preexec_fn=setup if nice or cpu is not None else None,
            command=(sys.executable, *self.launcher),
        )
        self.procs.append(proc)
        return proc

    def start_worker(
        self, index: int, nice: int = 0, pin: bool = False, env: dict[str, str] | None = None
    ) -> Proc:
        cpu = sorted(os.sched_getaffinity(0))[index % len(os.sched_getaffinity(0))] if pin else None
        return self.start(
            f"worker-{index}", "worker", "--poll-interval", "0.2", nice=nice, cpu=cpu, env=env
        )

    def start_api(self, port: int) -> Proc:
        return self.start(
            "api", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"
        )

    def stop(self) -> None:
        stop_all(self.procs)

    def tails(self) -> str:
        return tails(self.procs, 30)


@contextlib.contextmanager
def cluster(base_url: str | None, label: str) -> Iterator[Cluster]:
    """A fresh database (SQLite in a temporary folder, or a scratch PostgreSQL database on the
    server of ``base_url``), migrated, with its processes stopped at the end."""
    folder = Path(tempfile.mkdtemp(prefix=f"rankopt-bench-{label}-"))
    scratch: str | None = None
    if base_url is None:
        url = f"sqlite:///{folder}/service.db"
    else:
        import psycopg
        from sqlalchemy.engine import make_url

        scratch = f"rankopt_bench_{uuid.uuid4().hex[:12]}"
        conninfo = make_url(base_url).set(drivername="postgresql")
        with psycopg.connect(
            conninfo.render_as_string(hide_password=False), autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{scratch}"')
        url = make_url(base_url).set(database=scratch).render_as_string(hide_password=False)
    run = Cluster(folder, url)
    try:
        from service.store import Store

        Store.open(url).dispose()  # migrate once, before the processes race to
        yield run
    finally:
        run.stop()
        if scratch is not None:
            import psycopg
            from sqlalchemy.engine import make_url

            conninfo = make_url(base_url or "").set(drivername="postgresql")
            with psycopg.connect(
                conninfo.render_as_string(hide_password=False), autocommit=True
            ) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------- inputs
def train_weights(arch: str, dataset: str, folder: Path) -> Path:
    """``arch`` trained briefly on ``dataset`` (AdamW), saved as safetensors."""
    import torch
    from safetensors.torch import save_file

    from worker.data import load_dataset
    from worker.split_record import DataRecord
    from worker.training import train
    from worker.zoo import get_model

    torch.manual_seed(0)
    data = load_dataset(dataset, split_seed=SPLIT_SEED)
    model = get_model(arch, num_classes=data.num_classes)
    result = train(model, data, epochs=4, optimizer="adamw", lr=0.01)
    path = folder / "weights.safetensors"
    record = DataRecord(dataset=dataset, split_seed=SPLIT_SEED, name=data.name)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=record.to_metadata())
    print(
        f"trained {arch} on {dataset}: validation accuracy {result.final_val_accuracy:.4f}",
        flush=True,
    )
    return path


def job_spec(arch: str, dataset: str, trials: int, epochs: int) -> dict[str, Any]:
    return {
        "arch": arch,
        "dataset": dataset,
        "split_seed": SPLIT_SEED,  # the split the weights were trained on
        "trials": trials,
        "epochs_per_trial": epochs,
        "final_epochs": 1,
        "verify_top": 1,
        "pruner": "none",
        "max_accuracy_drop": 2.0,
    }


def queue_job(run: Cluster, weights: Path, spec: dict[str, Any]) -> tuple[Any, str, str, int]:
    """Queue ``spec`` as the API would (weights copied into the upload folder); the store, the
    job id, and its owner's API key and key id."""
    from service.store import Store

    settings = run.settings()
    store = Store.from_settings(settings)
    key, owner = store.create_api_key(f"bench-{uuid.uuid4().hex[:6]}")
    folder = settings.resolved_upload_dir / f"incoming-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    shutil.copyfile(weights, folder / "weights.safetensors")
    relative = (folder / "weights.safetensors").relative_to(settings.resolved_upload_dir)
    job = store.create_job(owner.id, spec, relative.as_posix(), trials_total=spec["trials"])
    return store, job.id, key, owner.id


# ---------------------------------------------------------------------- polling load
@dataclass
class LoadResult:
    latencies_ms: list[float]
    statuses: Counter[str]
    errors: Counter[str]
    reconnects: int
    connections: int
    sent: int
    elapsed_s: float
    max_lag_ms: float


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


async def _exchange(conn: _Conn, request: bytes) -> tuple[int, bytes, bool]:
    """Send one request, read one response: (status, body, keep the connection)."""
    conn.writer.write(request)
    await conn.writer.drain()
    head = await conn.reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await conn.reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await conn.reader.readuntil(b"\r\n")).strip(), 16)
            parts.append(await conn.reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(p[:-2] for p in parts)
    else:
        body = await conn.reader.read()
        return status, body, False
    return status, body, headers.get("connection", "").lower() != "close"


async def drive(
    host: str, port: int, path: str, key: str, rate: float, duration: float, warmup: float
) -> LoadResult:
    """Open-loop GETs of ``path`` at ``rate`` per second (see the module docstring)."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        "Accept: application/json\r\nUser-Agent: rankopt-bench\r\n\r\n"
    ).encode()
    idle: deque[_Conn] = deque()
    slots = asyncio.Semaphore(MAX_CONNECTIONS)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    counters = {"reconnects": 0, "connections": 0, "max_lag": 0.0}

    async def connect() -> _Conn:
        reader, writer = await asyncio.open_connection(host, port)
        counters["connections"] += 1
        return _Conn(reader, writer)

    async def one(due: float, measured: bool) -> None:
        async with slots:
            conn = idle.popleft() if idle else None
            try:
                for _ in range(2):
                    reused = conn is not None
                    if conn is None:
                        conn = await asyncio.wait_for(connect(), REQUEST_TIMEOUT_S)
                    try:
                        status, body, keep = await asyncio.wait_for(
                            _exchange(conn, request), REQUEST_TIMEOUT_S
                        )
                        break
                    except (ConnectionError, asyncio.IncompleteReadError):
                        conn.close()
                        conn = None
                        if not reused:
                            raise
                        counters["reconnects"] += 1  # closed by the server while idle
                else:  # pragma: no cover - the loop always breaks or raises
                    raise RuntimeError("unreachable")
                if keep:
                    idle.append(conn)
                else:
                    conn.close()
                if status == 200 and not body.startswith(b"{"):
                    status = -1  # not the JSON job
            except Exception as exc:
                if conn is not None:
                    conn.close()
                if measured:
                    errors[type(exc).__name__ or "error"] += 1
                return
        if measured:
            latencies.append((loop.time() - due) * 1000.0)
            statuses[str(status)] += 1
            if status != 200:
                errors[f"HTTP {status}"] += 1

    start = loop.time() + 0.05
    total = round(rate * (warmup + duration))
    warm = round(rate * warmup)
    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        counters["max_lag"] = max(counters["max_lag"], loop.time() - due)
        tasks.append(asyncio.create_task(one(due, i >= warm)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - (start + warm / rate)
    for conn in idle:
        conn.close()
    return LoadResult(
        latencies_ms=latencies,
        statuses=statuses,
        errors=errors,
        reconnects=int(counters["reconnects"]),
        connections=int(counters["connections"]),
        sent=total - warm,
        elapsed_s=elapsed,
        max_lag_ms=counters["max_lag"] * 1000.0,
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-100) by the nearest-rank method."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def bench_polling(args: argparse.Namespace, weights: Path) -> dict[str, Any]:
    duration = args.duration if args.duration is not None else (5.0 if args.quick else 30.0)
    n_workers = args.polling_workers
    print(
        f"\n## Status polling: {args.rate:g} requests/s for {duration:g} s, {n_workers} "
        f"worker(s) busy" + (f" (nice {args.worker_nice})" if args.worker_nice else "") + "\n",
        flush=True,
    )
    load_before = loadavg()
    with cluster(args.database_url, "polling") as run:
        port = free_port()
        api = run.start_api(port)
        workers = [run.start_worker(i, args.worker_nice) for i in range(n_workers)]
        url = f"http://127.0.0.1:{port}"
        spec = job_spec(args.arch, args.dataset, 100_000, args.epochs_per_trial)
        store, job_id, key, owner_id = queue_job(run, weights, spec)
        try:
            deadline = time.monotonic() + 120
            wait_ready(url, [api], 120, pause=0.2)
            # Both workers training: the job is SEARCHING and each runs a trial.
            while True:
                job = store.load_job(job_id)
                if job.status.value in TERMINAL:
                    raise RuntimeError(f"the job ended: {job.error_message}\n{run.tails()}")
                if n_workers == 0 or (
                    job.status.value == "SEARCHING" and job.trials_running >= n_workers
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the workers did not start searching\n" + run.tails())
                time.sleep(0.2)
            done_before = store.load_job(job_id).trials_done
            cpu_before = {p.name: cpu_seconds(p) for p in run.procs}
            client_cpu = time.process_time()
            result = asyncio.run(
                drive(
                    "127.0.0.1",
                    port,
                    f"/v1/jobs/{job_id}",
                    key,
                    args.rate,
                    duration,
                    0.5 if args.quick else WARMUP_S,
                )
            )
            client_cpu = time.process_time() - client_cpu
            cpu = {p.name: cpu_seconds(p) - cpu_before[p.name] for p in run.procs}
            after = store.load_job(job_id)
            alive = all(p.popen.poll() is None for p in [api, *workers])
            store.request_cancel(job_id, owner_id)
        finally:
            store.dispose()
    lat = result.latencies_ms
    n_errors = sum(result.errors.values())
    p99 = percentile(lat, 99)
    summary = {
        "target_rate": args.rate,
        "duration_s": duration,
        "requests": result.sent,
        "answered": len(lat),
        "achieved_rate": len(lat) / result.elapsed_s if result.elapsed_s > 0 else 0.0,
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": p99,
        "max_ms": max(lat) if lat else float("nan"),
        "mean_ms": statistics.fmean(lat) if lat else float("nan"),
        "errors": n_errors,
        "error_kinds": dict(result.errors),
        "statuses": dict(result.statuses),
        "reconnects": result.reconnects,
        "connections_opened": result.connections,
        "client_max_lag_ms": result.max_lag_ms,
        "api_cpu_s": cpu["api"],
        "api_cpu_ms_per_request": 1000.0 * cpu["api"] / max(1, result.sent),
        "worker_cpu_s": [cpu[w.name] for w in workers],
        "client_cpu_s": client_cpu,
        "workers": n_workers,
        "worker_nice": args.worker_nice,
        "trials_done_during_load": after.trials_done - done_before,
        "processes_alive": alive,
        "load_average_before": load_before,
        "load_average_after": loadavg(),
        "cpu_pressure_after": cpu_pressure(),
        "database": "postgresql" if args.database_url else "sqlite",
    }
    summary["goal"] = f"p99 <= {P99_GOAL_MS:g} ms, 0 errors"
    summary["status"] = "PASS" if p99 <= P99_GOAL_MS and n_errors == 0 else "MISS"
    print_polling(summary)
    return summary


def print_polling(s: dict[str, Any]) -> None:
    rows = [
        [
            s["database"],
            f"{s['workers']}" + (f" (nice {s['worker_nice']})" if s["worker_nice"] else ""),
            f"{s['target_rate']:g}/s x {s['duration_s']:g} s",
            s["requests"],
            f"{s['achieved_rate']:.1f}/s",
            f"{s['p50_ms']:.2f}",
            f"{s['p90_ms']:.2f}",
            f"{s['p99_ms']:.2f}",
            f"{s['max_ms']:.1f}",
            s["errors"],
            s["goal"],
            s["status"],
        ]
    ]
    print(
        markdown_table(
            [
                "database",
                "workers",
                "target",
                "requests",
                "achieved",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "errors",
                "goal",
                "status",
            ],
            rows,
        )
    )
    print()
    details = [
        ["error kinds", ", ".join(f"{k}: {v}" for k, v in s["error_kinds"].items()) or "none"],
        ["connections opened / reconnects", f"{s['connections_opened']} / {s['reconnects']}"],
        [
            "load generator: latest start of a request after its due time",
            f"{s['client_max_lag_ms']:.1f} ms",
        ],
        [
            "API CPU during the load",
            f"{s['api_cpu_s']:.1f} s ({s['api_cpu_ms_per_request']:.2f} ms per request)",
        ],
        [
            "worker CPU during the load",
            ", ".join(f"{v:.1f} s" for v in s["worker_cpu_s"]) or "no workers",
        ],
        ["load generator (this process) CPU", f"{s['client_cpu_s']:.1f} s"],
        ["trials finished during the load", s["trials_done_during_load"]],
        ["API and workers alive at the end", s["processes_alive"]],
        [
            "load average before / after (1/5/15 min)",
            f"{fmt_load(s['load_average_before'])} / {fmt_load(s['load_average_after'])}",
        ],
    ]
    print(markdown_table(["", ""], details))


# ---------------------------------------------------------------------- trial throughput
def _aware(moment: datetime) -> datetime:
    """Optuna's naive local timestamps as aware datetimes."""
    return moment.astimezone() if moment.tzinfo is None else moment


def bench_throughput_one(
    args: argparse.Namespace, weights: Path, n_workers: int, trials: int
) -> dict[str, Any]:
    import optuna

    from service.store import normalize_url

    load_before = loadavg()
    with cluster(args.database_url, f"throughput{n_workers}") as run:
        workers = [run.start_worker(i, pin=args.pin_workers) for i in range(n_workers)]
        for proc in workers:  # started and idle: their start-up is not timed
            wait_for_log(proc, "worker_started", 120)
        store, job_id, _, _ = queue_job(
            run, weights, job_spec(args.arch, args.dataset, trials, args.epochs_per_trial)
        )
        try:
            deadline = time.monotonic() + args.job_timeout
            while True:
                job = store.load_job(job_id)
                if job.status.value in TERMINAL:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the job did not finish in {args.job_timeout}s")
                time.sleep(0.5)
            if job.status.value != "SUCCEEDED":
                raise RuntimeError(f"the job {job.status.value}: {job.error_message}")
            url = normalize_url(run.database_url).render_as_string(hide_password=False)
            storage = optuna.storages.RDBStorage(url)
            frozen = storage.get_all_trials(storage.get_study_id_from_name(job.study_name))
            storage.engine.dispose()
        finally:
            store.dispose()
    return {
        **throughput_stats(job, frozen, n_workers),
        "load_average_before": load_before,
        "load_average_after": loadavg(),
    }


def throughput_stats(job: Any, frozen: list[Any], n_workers: int) -> dict[str, Any]:
    """Trials per minute of a finished job's search phase, from its study's trials."""
    from optuna.trial import TrialState

    counted = [
        t
        for t in frozen
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and t.datetime_start is not None
        and t.datetime_complete is not None
    ]
    assert job.search_started_at is not None
    search_start = job.search_started_at.astimezone(timezone.utc)
    ends = [_aware(t.datetime_complete).astimezone(timezone.utc) for t in counted]  # type: ignore[arg-type]
    end = max(ends)
    wall = (end - search_start).total_seconds()
    first_start: dict[str, datetime] = {}
    for t in counted:
        who = str(t.user_attrs.get("worker"))
        started = _aware(t.datetime_start).astimezone(timezone.utc)  # type: ignore[arg-type]
        first_start[who] = min(first_start.get(who, started), started)
    all_in = max(first_start.values())
    steady = [e for e in ends if e > all_in]
    steady_wall = (end - all_in).total_seconds()
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()  # type: ignore[operator]
        for t in counted
    ]
    per_worker = Counter(str(t.user_attrs.get("worker")) for t in counted)
    return {
        "workers": n_workers,
        "trials": len(counted),
        "search_s": wall,
        "trials_per_min": 60.0 * len(counted) / wall,
        "steady_trials": len(steady),
        "steady_s": steady_wall,
        "steady_trials_per_min": 60.0 * len(steady) / steady_wall if steady_wall > 0 else None,
        "mean_trial_s": statistics.fmean(durations),
        "trials_by_worker": sorted(per_worker.values(), reverse=True),
        "workers_used": len(per_worker),
        "join_delay_s": (all_in - search_start).total_seconds(),
    }


def bench_throughput(args: argparse.Namespace, weights: Path) -> dict[str, Any]:
    trials = args.trials if args.trials is not None else (6 if args.quick else 40)
    print(
        f"\n## Trial throughput: {args.arch} on {args.dataset}, {trials} trials of "
        f"{args.epochs_per_trial} epoch(s), "
        f"workers {' '.join(map(str, args.workers))}\n",
        flush=True,
    )
    runs = []
    for n in args.workers:
        run = bench_throughput_one(args, weights, n, trials)
        runs.append(run)
        print(
            f"{n} worker(s): {run['trials']} trials in {run['search_s']:.1f} s "
            f"({run['trials_per_min']:.1f}/min); load {fmt_load(run['load_average_after'])}",
            flush=True,
        )
    base = next((r for r in runs if r["workers"] == 1), None)
    for run in runs:
        run["speedup"] = run["trials_per_min"] / base["trials_per_min"] if base else None
        steady_base = base["steady_trials_per_min"] if base else None
        run["steady_speedup"] = (
            run["steady_trials_per_min"] / steady_base
            if steady_base and run["steady_trials_per_min"]
            else None
        )
    two = next((r for r in runs if r["workers"] == 2), None)
    goal = {
        "goal": f"2 workers >= {SPEEDUP_GOAL:g}x the trials/min of 1",
        "speedup": two["speedup"] if two else None,
        "status": (
            "-"
            if not two or two["speedup"] is None
            else "PASS"
            if two["speedup"] >= SPEEDUP_GOAL
            else "MISS"
        ),
    }
    print()
    print_throughput(runs, goal)
    return {"trials": trials, "runs": runs, "goal": goal, "database": bool(args.database_url)}


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_throughput(runs: list[dict[str, Any]], goal: dict[str, Any]) -> None:
    rows = [
        [
            r["workers"],
            r["trials"],
            f"{r['search_s']:.1f}",
            f"{r['trials_per_min']:.1f}",
            _x(r["speedup"]),
            f"{r['steady_trials_per_min']:.1f}" if r["steady_trials_per_min"] else "-",
            _x(r["steady_speedup"]),
            f"{r['mean_trial_s']:.2f}",
            f"{r['join_delay_s']:.1f}",
            "/".join(map(str, r["trials_by_worker"])),
            fmt_load(r["load_average_after"]),
        ]
        for r in runs
    ]
    print(
        markdown_table(
            [
                "workers",
                "trials",
                "search s",
                "trials/min",
                "speed-up",
                "steady trials/min",
                "steady speed-up",
                "mean trial s",
                "last worker joined after s",
                "trials per worker",
                "load after",
            ],
            rows,
        )
    )
    print()
    print(
        markdown_table(
            ["goal", "measured", "status"], [[goal["goal"], _x(goal["speedup"]), goal["status"]]]
        )
    )


# ---------------------------------------------------------------------- main
def print_machine(machine: dict[str, Any], vers: dict[str, str], args: argparse.Namespace) -> None:
    print("\n## Machine and versions\n")
    pressure = machine["cpu_pressure"]
    rows: list[list[object]] = [
        ["CPU", machine["cpu"]],
        ["cores", machine["cores"]],
        ["load average (1/5/15 min)", fmt_load(machine["load_average_1_5_15"])],
        [
            "CPU pressure, PSI some avg10/60/300 (%)",
            " ".join(f"{v:.1f}" for v in pressure.values()) or "-",
        ],
        ["database", "PostgreSQL (scratch databases)" if args.database_url else "SQLite (WAL)"],
        ["model / data", f"{args.arch} / {args.dataset}"],
    ]
    rows.extend([name, version] for name, version in vers.items())
    print(markdown_table(["", ""], rows))


def bench_faults(args: argparse.Namespace, weights: Path) -> dict[str, Any]:
    """Worker start-up before/after and the churn run with and without faults (bench/_churn.py)."""
    from _churn import bench_churn, bench_startup

    spec = job_spec(args.arch, args.dataset, args.trials or 6, args.epochs_per_trial)
    out: dict[str, Any] = {"load_before": loadavg()}
    roots = [ROOT] + ([Path(args.before).resolve()] if args.before else [])
    if not args.skip_startup:
        with cluster(args.database_url, "startup") as run:
            out["startup_s"] = bench_startup(run, weights, spec, queue_job, roots)
        print(f"\nworker start to first trial (s): {out['startup_s']}", flush=True)
    for faults in () if args.skip_churn_runs else (False, True):
        with cluster(args.database_url, "churn") as run:
            result = bench_churn(
                run,
                weights,
                spec,
                queue_job,
                jobs=args.churn_jobs,
                workers=args.churn_workers,
                kill_every=args.kill_every if faults else None,
                timeout=args.job_timeout,
            )
        out["faults" if faults else "no_faults"] = result
        print(json.dumps(result), flush=True)
    out["load_after"] = loadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds each: a smoke test")
    parser.add_argument(
        "--duration", type=float, default=None, help="polling seconds (default 30, 5 with --quick)"
    )
    parser.add_argument("--rate", type=float, default=500.0, help="polling requests/s (500)")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="worker counts of the throughput runs (default 1 2; e.g. 1 2 4 8 on a big machine)",
    )
    parser.add_argument(
        "--trials", type=int, default=None, help="trials per throughput job (40; 6 with --quick)"
    )
    parser.add_argument(
        "--polling-workers",
        type=int,
        default=2,
        help="workers training while the API is polled (default 2; 0: the API alone)",
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="nice level of the polling run's workers (default 0: same priority as the API)",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server (postgresql://user@host:port/db) to create scratch databases "
        "on; default: SQLite files in a temporary folder",
    )
    parser.add_argument("--arch", default="rankopt:lenet5", help="model (default rankopt:lenet5)")
    parser.add_argument("--dataset", default="mnist5k", help="data (default mnist5k)")
    parser.add_argument(
        "--epochs-per-trial",
        type=int,
        default=None,
        help="fine-tuning epochs per trial (default 3, the job spec's default; 1 with --quick)",
    )
    parser.add_argument(
        "--job-timeout", type=float, default=1800.0, help="seconds a throughput job may take"
    )
    parser.add_argument(
        "--pin-workers",
        action="store_true",
        help="throughput runs: pin worker i to CPU i (mod the CPUs this process may use)",
    )
    parser.add_argument(
        "--churn",
        action="store_true",
        help="instead: the fault benchmarks (bench/_churn.py; needs --database-url)",
    )
    parser.add_argument(
        "--before", default=None, help="--churn: a checkout to time worker start-up against"
    )
    parser.add_argument("--churn-jobs", type=int, default=6)
    parser.add_argument("--churn-workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=10.0)
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--skip-churn-runs", action="store_true")
    parser.add_argument("--skip-polling", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--out", default="bench/results", help="folder for the JSON")
    args = parser.parse_args(argv)
    if args.rate <= 0 or (args.duration is not None and args.duration <= 0):
        parser.error("--rate and --duration must be positive")
    if args.epochs_per_trial is None:
        args.epochs_per_trial = 1 if args.quick else 3
    if args.epochs_per_trial < 1:
        parser.error("--epochs-per-trial must be >= 1")
    if args.polling_workers < 0 or not 0 <= args.worker_nice <= 19:
        parser.error("--polling-workers must be >= 0 and --worker-nice in 0..19")
    if any(n < 1 for n in args.workers) or (args.trials is not None and args.trials < 1):
        parser.error("--workers and --trials must be >= 1")
    if args.database_url and not args.database_url.startswith(("postgresql", "postgres")):
        parser.error("--database-url must be a PostgreSQL URL (SQLite is the default)")

    machine = machine_info()
    vers = versions()
    print("# rankopt service benchmark" + (" (--quick)" if args.quick else ""))
    print_machine(machine, vers, args)
    sys.stdout.flush()
    results: dict[str, Any] = {
        "machine": machine,
        "versions": vers,
        "args": {k: v for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="rankopt-bench-weights-") as tmp:
        weights = train_weights(args.arch, args.dataset, Path(tmp))
        if args.churn:
            results["churn"] = bench_faults(args, weights)
            args.skip_polling = args.skip_throughput = True
        if not args.skip_polling:
            results["polling"] = bench_polling(args, weights)
        if not args.skip_throughput:
            results["throughput"] = bench_throughput(args, weights)
    results["load_average_after"] = loadavg()
    results["cpu_pressure_after"] = cpu_pressure()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "churn" if args.churn else "service"
    path = out / f"{name}{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
