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
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _common import cpu_pressure, machine_info, markdown_table, versions
from _service_cluster import (
    ROOT,
    SPEEDUP_GOAL,
    TERMINAL,
    cluster,
    fmt_load,
    job_spec,
    loadavg,
    queue_job,
    train_weights,
)
from _service_polling import bench_polling

from service.procs import wait_for_log


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
