"""The polling-load benchmark of ``bench/bench_service.py``: many clients polling a job's status."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import cpu_pressure, markdown_table
from _service_cluster import (
    MAX_CONNECTIONS,
    P99_GOAL_MS,
    REQUEST_TIMEOUT_S,
    TERMINAL,
    WARMUP_S,
    cluster,
    cpu_seconds,
    fmt_load,
    job_spec,
    loadavg,
    queue_job,
)

from service.procs import free_port, wait_ready


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
