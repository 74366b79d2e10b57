"""Scale-out on PostgreSQL: trial throughput of 1, 2, 4 workers on one job, what each worker
spends on the CPU, and what coordinating through the database costs per trial.

Usage::

    nice .venv/bin/python bench/bench_scaleout.py --database-url postgresql://postgres@127.0.0.1/postgres
        [--workers 1 2 4] [--trials 24] [--arch rankopt:tinycnn] [--dataset digits]
        [--epochs-per-trial 1] [--gpu-trial-s 30 120] [--out bench/results]

For each worker count, a scratch database on the server of ``--database-url`` (created and
dropped, as ``bench_service.py`` does), that many single-threaded ``rankopt worker`` processes
(``OMP_NUM_THREADS=1``) and one job of ``--trials`` trials. Each worker runs under
``bench/_dbtrace.py``, which counts its PostgreSQL round-trips and the time spent in them by
purpose (claim, progress, study ask/tell, trial and lease heartbeats, reaper, prepare/finalize)
and writes its CPU time at exit. Meanwhile the script samples the workers' connections
(``pg_stat_activity``, by ``application_name``) and reads the server's transaction counters
(``pg_stat_database``) before and after, as a cross-check of the traced counts.

Per-worker CPU time separates contention from coordination: when the CPU seconds per trial
stay flat while the wall time per trial grows, the workers are waiting for a core, not for
each other or the database. The round-trips per trial and per worker-second then give an
**extrapolation** (printed as such) to 64 GPU workers for the trial durations of
``--gpu-trial-s``: connections, round-trips and transactions per second on PostgreSQL, and the
worker count past which PgBouncer is needed under the default ``max_connections``.

Prints markdown tables and writes ``<out>/scaleout.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine_info, markdown_table, versions
from _dbtrace import CATEGORIES, Trace, install
from bench_service import (
    ROOT,
    TERMINAL,
    cluster,
    fmt_load,
    job_spec,
    loadavg,
    queue_job,
    throughput_stats,
    train_weights,
    wait_for_log,
)

# what each trial costs once (the trial heartbeat: its first beat; a trial shorter than the
# heartbeat interval sends only that one); what a worker costs per second whatever it runs
PER_TRIAL = ("claim", "progress", "study ask/tell", "stale-trial check", "trial heartbeat", "other")
TIME_BASED = ("reaper", "lease heartbeat")
TRIAL_HEARTBEAT_S = 30.0  # RANKOPT_TRIAL_HEARTBEAT_SECONDS's default
NETWORK_RTT_MS = 0.5  # an assumed round-trip time to a database in the same data centre
API_CONNECTIONS = 2 * (5 + 10)  # two API replicas, pool 5 + overflow 10 each (the manifests)
OTHER_CONNECTIONS = 5 + 1 + 3  # optuna-dashboard, KEDA's query, superuser_reserved_connections
DEFAULT_MAX_CONNECTIONS = 100


def _server_counters(admin: Any, database: str) -> tuple[int, int]:
    """(transactions, round-trip-free) counters of ``database``: xact_commit + xact_rollback."""
    admin.execute("SELECT pg_stat_clear_snapshot()")
    row = admin.execute(
        "SELECT xact_commit + xact_rollback, numbackends FROM pg_stat_database WHERE datname = %s",
        (database,),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _worker_connections(admin: Any, database: str) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
        "AND application_name LIKE 'rankopt-bench-worker-%%'",
        (database,),
    ).fetchone()
    return int(row[0]) if row else 0


def _window(history: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """Counts, seconds, CPU and wall time of one worker between two moments (its snapshots
    just before ``start`` and just after ``end``)."""
    first = max((h for h in history if h["t"] <= start), key=lambda h: h["t"], default=history[0])
    last = min((h for h in history if h["t"] >= end), key=lambda h: h["t"], default=history[-1])

    def delta(key: str) -> dict[str, float]:
        return {c: last[key].get(c, 0) - first[key].get(c, 0) for c in last[key]}

    return {
        "t": last["t"] - first["t"],
        "cpu_s": last["cpu_s"] - first["cpu_s"],
        "round_trips": delta("round_trips"),
        "seconds": delta("seconds"),
        "transactions": last["transactions"] - first["transactions"],
    }


def run_one(
    args: argparse.Namespace, weights: Path, n_workers: int, bench_trace: Trace
) -> dict[str, Any]:
    import optuna
    import psycopg
    from sqlalchemy.engine import make_url

    from service.store import normalize_url

    load_before = loadavg()
    admin_url = make_url(args.database_url).set(drivername="postgresql")
    with (
        psycopg.connect(admin_url.render_as_string(hide_password=False), autocommit=True) as admin,
        cluster(args.database_url, f"scaleout{n_workers}") as run,
    ):
        database = str(make_url(run.database_url).database)
        traces = run.folder / "dbtrace"
        traces.mkdir()
        time.sleep(1.5)  # the migration's connections are closed: their statistics flushed
        xacts_before, _ = _server_counters(admin, database)
        own_before = bench_trace.as_dict()["transactions"]  # this process's, to subtract
        run.launcher = [str(ROOT / "bench" / "_dbtrace.py")]
        workers = [
            run.start_worker(
                i,
                env={
                    "RANKOPT_BENCH_DBTRACE_DIR": str(traces),
                    "PGAPPNAME": f"rankopt-bench-worker-{i}",
                },
            )
            for i in range(n_workers)
        ]
        for proc in workers:
            wait_for_log(proc, "worker_started", 180)
        store, job_id, _, _ = queue_job(
            run, weights, job_spec(args.arch, args.dataset, args.trials, args.epochs_per_trial)
        )
        peak = 0
        try:
            deadline = time.monotonic() + args.job_timeout
            while True:
                job = store.load_job(job_id)
                peak = max(peak, _worker_connections(admin, database))
                if job.status.value in TERMINAL:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the job did not finish in {args.job_timeout}s")
                time.sleep(1.0)
            if job.status.value != "SUCCEEDED":
                raise RuntimeError(f"the job {job.status.value}: {job.error_message}")
            load_end = loadavg()
            url = normalize_url(run.database_url).render_as_string(hide_password=False)
            storage = optuna.storages.RDBStorage(url)
            frozen = storage.get_all_trials(storage.get_study_id_from_name(job.study_name))
            storage.engine.dispose()
        finally:
            store.dispose()
        run.stop()  # the workers exit and write their traces
        time.sleep(1.5)  # backends flush their statistics as they end
        xacts_after, _ = _server_counters(admin, database)
        bench_own = bench_trace.as_dict()["transactions"] - own_before
        per_worker = [json.loads(p.read_text()) for p in sorted(traces.glob("*.json"))]
    if len(per_worker) != n_workers:
        raise RuntimeError(f"{len(per_worker)} traces from {n_workers} workers")
    stats = throughput_stats(job, frozen, n_workers)
    trials = stats["trials"]
    # the search phase: from search_started_at to the end of the last counted trial
    start = job.search_started_at.timestamp()
    end = start + stats["search_s"]
    window = [_window(w["history"], start, end) for w in per_worker]
    trips = {c: sum(w["round_trips"].get(c, 0) for w in window) for c in CATEGORIES}
    seconds = {c: sum(w["seconds"].get(c, 0.0) for w in window) for c in CATEGORIES}
    worker_wall = sum(w["t"] for w in window)
    cpu = [w["cpu_s"] for w in window]
    return {
        **stats,
        "worker_cpu_s": cpu,
        "cpu_s_per_trial": sum(cpu) / trials,
        "cpu_share": sum(cpu) / worker_wall,
        "worker_cpu_s_whole_run": [w["cpu_s"] for w in per_worker],
        "round_trips_whole_run": sum(sum(w["round_trips"].values()) for w in per_worker),
        "round_trips": trips,
        "db_seconds": seconds,
        "per_trial_round_trips": sum(trips[c] for c in PER_TRIAL) / trials,
        "per_trial_db_ms": 1000 * sum(seconds[c] for c in PER_TRIAL) / trials,
        "beat_round_trips": trips["trial heartbeat"] / trials,
        "ms_per_round_trip": 1000 * sum(seconds.values()) / max(1, sum(trips.values())),
        "time_based_round_trips_per_worker_s": sum(trips[c] for c in TIME_BASED) / worker_wall,
        "job_round_trips": sum(w["round_trips"].get("prepare/finalize", 0) for w in per_worker),
        "traced_transactions": sum(w["transactions"] for w in per_worker),
        "window_transactions": sum(w["transactions"] for w in window),
        "server_transactions": xacts_after - xacts_before - bench_own,
        "connects": sum(w["connects"] for w in per_worker),
        "peak_connections": peak,
        "peak_connections_per_worker": peak / n_workers,
        "load_average_before": load_before,
        "load_average_end": load_end,
    }


def extrapolate(runs: list[dict[str, Any]], gpu_trial_s: list[float]) -> dict[str, Any]:
    """64 GPU workers from the largest measured run: an extrapolation, not a measurement.

    Per worker and second: (round-trips per trial + one more heartbeat per interval of the
    trial) / trial seconds + the reaper's round-trips per second. Transactions in proportion.
    """
    ref = max(runs, key=lambda r: r["workers"])
    tx_per_trip = ref["window_transactions"] / max(1, sum(ref["round_trips"].values()))
    conns = max(r["peak_connections_per_worker"] for r in runs)
    out: dict[str, Any] = {
        "from_workers": ref["workers"],
        "connections_per_worker": conns,
        "connections_64": math.ceil(64 * conns) + API_CONNECTIONS + OTHER_CONNECTIONS,
        "workers_before_pgbouncer": math.floor(
            (DEFAULT_MAX_CONNECTIONS - API_CONNECTIONS - OTHER_CONNECTIONS) / conns
        ),
        "rows": [],
    }
    for seconds in gpu_trial_s:
        per_trial = ref["per_trial_round_trips"] + ref["beat_round_trips"] * math.floor(
            seconds / TRIAL_HEARTBEAT_S
        )
        per_worker_s = per_trial / seconds + ref["time_based_round_trips_per_worker_s"]
        out["rows"].append(
            {
                "trial_s": seconds,
                "round_trips_per_trial": per_trial,
                "round_trips_per_s": 64 * per_worker_s,
                "transactions_per_s": 64 * per_worker_s * tx_per_trip,
                "trials_per_s": 64 / seconds,
                "coordination_share_measured": per_trial
                * ref["ms_per_round_trip"]
                / (1000 * seconds),
                "coordination_share_network": per_trial * NETWORK_RTT_MS / (1000 * seconds),
            }
        )
    return out


def print_results(runs: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    base = next((r for r in runs if r["workers"] == 1), runs[0])
    print("\n### Throughput and CPU\n")
    print(
        markdown_table(
            [
                "workers",
                "trials",
                "search s",
                "trials/min",
                "speed-up",
                "mean trial s (wall)",
                "CPU s per worker (search)",
                "CPU s per trial",
                "CPU share of a worker",
                "load avg before / at end",
            ],
            [
                [
                    r["workers"],
                    r["trials"],
                    f"{r['search_s']:.1f}",
                    f"{r['trials_per_min']:.1f}",
                    f"{r['trials_per_min'] / base['trials_per_min']:.2f}x",
                    f"{r['mean_trial_s']:.2f}",
                    " / ".join(f"{c:.1f}" for c in r["worker_cpu_s"]),
                    f"{r['cpu_s_per_trial']:.2f}",
                    f"{100 * r['cpu_share']:.0f}%",
                    f"{fmt_load(r['load_average_before'][:1])} / "
                    f"{fmt_load(r['load_average_end'][:1])}",
                ]
                for r in runs
            ],
        )
    )
    print("\n### Coordination per trial (round-trips / ms spent in them)\n")
    headers = ["workers", *PER_TRIAL, "per trial", "ms per round-trip", *TIME_BASED]
    rows = []
    for r in runs:
        n = r["trials"]
        row: list[object] = [r["workers"]]
        for c in (*PER_TRIAL,):
            row.append(f"{r['round_trips'][c] / n:.1f} / {1000 * r['db_seconds'][c] / n:.0f}")
        row.append(f"**{r['per_trial_round_trips']:.1f} / {r['per_trial_db_ms']:.0f}**")
        row.append(f"{r['ms_per_round_trip']:.2f}")
        for c in TIME_BASED:
            row.append(f"{r['round_trips'][c] / n:.1f} / {1000 * r['db_seconds'][c] / n:.0f}")
        rows.append(row)
    print(markdown_table(headers, rows))
    print("\n### Per worker-second, transactions, connections\n")
    print(
        markdown_table(
            [
                "workers",
                "reaper + lease round-trips per worker-s",
                "prepare+finalize round-trips (per job)",
                "transactions traced / on the server (whole run)",
                "connections opened",
                "peak connections (per worker)",
            ],
            [
                [
                    r["workers"],
                    f"{r['time_based_round_trips_per_worker_s']:.3f}",
                    r["job_round_trips"],
                    f"{r['traced_transactions']} / {r['server_transactions']}",
                    r["connects"],
                    f"{r['peak_connections']} ({r['peak_connections_per_worker']:.1f})",
                ]
                for r in runs
            ],
        )
    )
    print(
        f"\n### EXTRAPOLATION to 64 GPU workers (from the {extra['from_workers']}-worker run; "
        "not measured)\n"
    )
    print(
        markdown_table(
            [
                "GPU trial s",
                "round-trips per trial",
                "trials/s",
                "round-trips/s",
                "transactions/s",
                "worker time coordinating (measured ms / 0.5 ms RTT)",
            ],
            [
                [
                    f"{row['trial_s']:g}",
                    f"{row['round_trips_per_trial']:.0f}",
                    f"{row['trials_per_s']:.2f}",
                    f"{row['round_trips_per_s']:.0f}",
                    f"{row['transactions_per_s']:.0f}",
                    f"{100 * row['coordination_share_measured']:.1f}% / "
                    f"{100 * row['coordination_share_network']:.2f}%",
                ]
                for row in extra["rows"]
            ],
        )
    )
    print(
        f"\nconnections: {extra['connections_per_worker']:.1f} per worker x 64 + API "
        f"{API_CONNECTIONS} + dashboard/KEDA/reserved {OTHER_CONNECTIONS} = "
        f"{extra['connections_64']}; under max_connections={DEFAULT_MAX_CONNECTIONS} about "
        f"{extra['workers_before_pgbouncer']} workers fit before PgBouncer (or a higher "
        "max_connections) is needed"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="postgresql://user@host:port/db")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--arch", default="rankopt:tinycnn")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs-per-trial", type=int, default=1)
    parser.add_argument("--gpu-trial-s", type=float, nargs="+", default=[30.0, 120.0])
    parser.add_argument("--job-timeout", type=float, default=900.0)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    if not args.database_url.startswith(("postgresql", "postgres")):
        parser.error("--database-url must be a PostgreSQL URL")
    if any(n < 1 for n in args.workers) or args.trials < 1 or args.epochs_per_trial < 1:
        parser.error("--workers, --trials and --epochs-per-trial must be >= 1")
    machine = machine_info()
    print(
        f"# rankopt scale-out on PostgreSQL: {args.arch} on {args.dataset}, {args.trials} "
        f"trials of {args.epochs_per_trial} epoch(s); {machine['cores']} cores, load "
        f"{fmt_load(machine['load_average_1_5_15'])}"
    )
    runs = []
    bench_trace = install()
    with tempfile.TemporaryDirectory(prefix="rankopt-bench-weights-") as tmp:
        weights = train_weights(args.arch, args.dataset, Path(tmp))
        for n in args.workers:
            runs.append(run_one(args, weights, n, bench_trace))
            print(f"{n} worker(s): {runs[-1]['trials_per_min']:.1f} trials/min", flush=True)
    extra = extrapolate(runs, args.gpu_trial_s)
    print_results(runs, extra)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scaleout.json"
    results = {
        "machine": machine,
        "versions": versions(),
        "args": vars(args),
        "runs": runs,
        "extrapolation": extra,
    }
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
