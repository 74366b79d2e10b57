"""Benchmark tensorops' decompositions against tensorly and a plain numpy EVBMF.

Usage::

    .venv/bin/python bench/bench_decompositions.py [--quick] [--out bench/results]
        [--tl-timeout SECONDS] [--repeats N]

Prints markdown tables (machine, versions, then one table per measurement and the goals) and
writes every number to a JSON file (``--out``: a ``.json`` path, or a folder that receives
``decompositions.json``, ``decompositions_quick.json`` with ``--quick``).

Measurements, side by side in one run, wall-clock with ``time.perf_counter``:

1. CP of a trained-looking 512x512x3x3 kernel at rank 128: ``tensorops.cp_als`` (defaults, and
   ``compression=None``) against tensorly's ``parafac(X, 128, init='svd', random_state=0)``.
2. Tucker-2 of the same kernel at ranks (128, 128): ``tensorops.tucker2`` against tensorly's
   ``partial_tucker(X, rank=[128, 128], modes=[0, 1])``.
3. EVBMF of a 512x4608 matrix with a planted rank of 40: ``tensorops.evbmf`` against the usual
   public numpy implementation (full SVD, then the noise variance by ``minimize_scalar``).
4. Every conv layer of a CIFAR VGG-16 (13 random 3x3 kernels): Tucker-2 at half ranks, CP at half
   of min(out, in), and the EVBMF Tucker-2 ranks.

tensorly runs in a subprocess (this script with ``--tl-worker``) under a timeout, on its numpy
backend in float64; it gets the very same float64 kernel as tensorops. Its time is measured inside
the subprocess around the decomposition call only (no interpreter start, import or file load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    cpu_pressure,
    fmt_error,
    fmt_seconds,
    machine_info,
    markdown_table,
    median_time,
    timed,
    versions,
)
from _decomp_evbmf_vgg import (
    bench_evbmf,
    bench_vgg,
    print_evbmf,
    print_vgg,
)
from _decomp_inputs import (
    CP_GOAL_SECONDS,
    EVBMF_GOAL_SECONDS,
    Config,
    full_config,
    quick_config,
    relative_error,
    trained_like_kernel,
)

import tensorops

# --------------------------------------------------------------------------------------------
# tensorly, in a subprocess


def tl_worker(spec_path: str) -> None:
    """Run one tensorly decomposition as described by the JSON spec and write a JSON result."""
    spec = json.loads(Path(spec_path).read_text())
    import tensorly as tl
    from tensorly.decomposition import parafac, partial_tucker

    tl.set_backend("numpy")
    x = np.load(spec["input"])
    result: dict[str, Any] = {"tensorly": tl.__version__}
    if spec["method"] == "parafac":
        progress = open(spec["progress"], "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        start = time.perf_counter()

        def callback(_cp: Any, error: float) -> None:
            # One line per iteration (plus one for the initialisation): elapsed s, rel. error.
            progress.write(f"{time.perf_counter() - start:.3f} {float(error):.10f}\n")

        start = time.perf_counter()
        cp = parafac(x, spec["rank"], init="svd", random_state=0, callback=callback)
        elapsed = time.perf_counter() - start
        progress.close()
        result.update(
            seconds=elapsed,
            times=[elapsed],
            error=relative_error(x, tl.cp_to_tensor(cp)),
            n_iter=len(Path(spec["progress"]).read_text().splitlines()) - 1,
        )
    elif spec["method"] == "partial_tucker":
        times: list[float] = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            (core, factors), errors = partial_tucker(x, rank=spec["ranks"], modes=[0, 1])
            times.append(time.perf_counter() - start)
        approx = tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1])
        result.update(
            seconds=float(np.median(times)),
            times=times,
            error=relative_error(x, approx),
            n_iter=len(errors),
        )
    else:
        raise ValueError(f"unknown method {spec['method']!r}")
    Path(spec["output"]).write_text(json.dumps(result))


def run_tensorly(
    method: str, x: np.ndarray, timeout: float, workdir: Path, **params: Any
) -> dict[str, Any]:
    """Run ``method`` in a subprocess with a wall-clock ``timeout`` (startup included).

    Returns the worker's JSON plus ``status`` ('ok', 'timeout' or 'error'); on timeout the last
    parafac iteration reached (from its progress file) is reported as ``last_iter``/``last_error``.
    """
    input_path = workdir / f"{method}_input.npy"
    spec_path = workdir / f"{method}_spec.json"
    output_path = workdir / f"{method}_result.json"
    progress_path = workdir / f"{method}_progress.txt"
    np.save(input_path, x)
    spec = {
        "method": method,
        "input": str(input_path),
        "output": str(output_path),
        "progress": str(progress_path),
        **params,
    }
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, str(Path(__file__).resolve()), "--tl-worker", str(spec_path)]
    start = time.perf_counter()
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        info: dict[str, Any] = {"status": "timeout", "timeout_s": timeout}
        if progress_path.exists():
            lines = progress_path.read_text().split("\n")
            rows = [line.split() for line in lines if len(line.split()) == 2]
            if rows:
                info.update(
                    last_iter=len(rows) - 1,
                    last_elapsed_s=float(rows[-1][0]),
                    last_error=float(rows[-1][1]),
                )
        return info
    wall = time.perf_counter() - start
    if completed.returncode != 0 or not output_path.exists():
        return {
            "status": "error",
            "returncode": completed.returncode,
            "stderr_tail": completed.stderr[-2000:],
        }
    result: dict[str, Any] = json.loads(output_path.read_text())
    result.update(status="ok", subprocess_wall_s=wall)
    return result


def tl_seconds_cell(result: dict[str, Any]) -> str:
    if result["status"] == "ok":
        return fmt_seconds(result["seconds"])
    if result["status"] == "timeout":
        return f"did not finish in {result['timeout_s']:g} s"
    return f"failed (rc {result.get('returncode')})"


def tl_error_cell(result: dict[str, Any]) -> str:
    if result["status"] == "ok":
        return fmt_error(result["error"])
    if "last_error" in result:
        return (
            f"{result['last_error']:.5f} after {result['last_iter']} iterations "
            f"({result['last_elapsed_s']:.0f} s)"
        )
    return "-"


# --------------------------------------------------------------------------------------------
# Measurements


def warm_up() -> None:
    """First calls pay for lazy library initialisation; keep that out of the timings."""
    k = torch.randn(8, 8, 3, 3, dtype=torch.float64)
    tensorops.cp_als(k, 4)
    tensorops.cp_als(k, 4, compression=None, n_iter_max=2)
    tensorops.tucker2(k, (4, 4))
    tensorops.evbmf(torch.randn(16, 40, dtype=torch.float64))


def bench_cp(cfg: Config, kernel: np.ndarray, workdir: Path) -> dict[str, Any]:
    x = torch.from_numpy(kernel)
    rank = cfg.cp_rank
    seconds, times, res = median_time(lambda: tensorops.cp_als(x, rank), cfg.repeats)
    default = {
        "seconds": seconds,
        "times": times,
        "error": relative_error(kernel, res.to_tensor().numpy()),
        "n_iter": res.n_iter,
        "converged": res.converged,
    }
    seconds_full, res_full = timed(lambda: tensorops.cp_als(x, rank, compression=None))
    uncompressed = {
        "seconds": seconds_full,
        "times": [seconds_full],
        "error": relative_error(kernel, res_full.to_tensor().numpy()),
        "n_iter": res_full.n_iter,
        "converged": res_full.converged,
    }
    tl_result = run_tensorly("parafac", kernel, cfg.tl_timeout, workdir, rank=rank)
    return {
        "shape": list(kernel.shape),
        "rank": rank,
        "tensorops_cp_als": default,
        "tensorops_cp_als_no_compression": uncompressed,
        "tensorly_parafac": tl_result,
    }


def print_cp(cfg: Config, cp: dict[str, Any]) -> None:
    shape = "x".join(map(str, cp["shape"]))
    print(f"\n## 1. CP of a {shape} kernel at rank {cp['rank']}\n")
    d, u, t = cp["tensorops_cp_als"], cp["tensorops_cp_als_no_compression"], cp["tensorly_parafac"]
    rows = [
        [
            "tensorops.cp_als (defaults)",
            fmt_seconds(d["seconds"]),
            fmt_error(d["error"]),
            d["n_iter"],
            f"median of {len(d['times'])}",
        ],
        [
            "tensorops.cp_als (compression=None)",
            fmt_seconds(u["seconds"]),
            fmt_error(u["error"]),
            u["n_iter"],
            "1 run",
        ],
        [
            "tensorly parafac (init='svd', random_state=0)",
            tl_seconds_cell(t),
            tl_error_cell(t),
            t.get("n_iter", t.get("last_iter", "-")),
            "1 run, subprocess",
        ],
    ]
    print(markdown_table(["method", "time", "rel. error", "sweeps", "timing"], rows))


def bench_tucker(cfg: Config, kernel: np.ndarray, workdir: Path) -> dict[str, Any]:
    x = torch.from_numpy(kernel)
    ranks = cfg.tucker_ranks
    seconds, times, res = median_time(lambda: tensorops.tucker2(x, ranks), cfg.repeats)
    hosvd = {
        "seconds": seconds,
        "times": times,
        "error": relative_error(kernel, res.to_tensor().numpy()),
        "n_iter": res.n_iter,
    }
    seconds_h, times_h, res_h = median_time(
        lambda: tensorops.tucker2(x, ranks, n_iter=100, tol=1e-4), cfg.repeats
    )
    hooi = {
        "seconds": seconds_h,
        "times": times_h,
        "error": relative_error(kernel, res_h.to_tensor().numpy()),
        "n_iter": res_h.n_iter,
    }
    tl_result = run_tensorly(
        "partial_tucker",
        kernel,
        cfg.tl_timeout,
        workdir,
        ranks=list(ranks),
        repeats=cfg.repeats,
    )
    return {
        "shape": list(kernel.shape),
        "ranks": list(ranks),
        "tensorops_tucker2": hosvd,
        "tensorops_tucker2_hooi": hooi,
        "tensorly_partial_tucker": tl_result,
    }


def print_tucker(cfg: Config, tk: dict[str, Any]) -> None:
    shape = "x".join(map(str, tk["shape"]))
    print(f"\n## 2. Tucker-2 of the {shape} kernel at ranks {tuple(tk['ranks'])}\n")
    h, o, t = tk["tensorops_tucker2"], tk["tensorops_tucker2_hooi"], tk["tensorly_partial_tucker"]
    rows = [
        [
            "tensorops.tucker2 (defaults: HOSVD, n_iter=0)",
            fmt_seconds(h["seconds"]),
            fmt_error(h["error"]),
            h["n_iter"],
            f"median of {len(h['times'])}",
        ],
        [
            "tensorops.tucker2 (n_iter=100, tol=1e-4, as tensorly)",
            fmt_seconds(o["seconds"]),
            fmt_error(o["error"]),
            o["n_iter"],
            f"median of {len(o['times'])}",
        ],
        [
            "tensorly partial_tucker (modes=[0, 1], defaults)",
            tl_seconds_cell(t),
            tl_error_cell(t),
            t.get("n_iter", "-"),
            f"median of {len(t.get('times', []))}, subprocess",
        ],
    ]
    print(markdown_table(["method", "time", "rel. error", "HOOI iters", "timing"], rows))


def goals(results: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    cp = results["cp"]
    ours = cp["tensorops_cp_als"]
    tl_cp = cp["tensorly_parafac"]
    fast = ours["seconds"] <= CP_GOAL_SECONDS
    if tl_cp["status"] == "ok":
        reference, against = tl_cp["error"], "tensorly's final error"
    elif "last_error" in tl_cp:
        reference = tl_cp["last_error"]
        against = f"tensorly's error at its timeout (iteration {tl_cp['last_iter']})"
    else:
        reference, against = None, "tensorly gave no error"
    accurate = None if reference is None else ours["error"] <= reference
    verdict = "PASS" if fast and accurate else ("UNKNOWN" if fast and accurate is None else "MISS")
    if verdict == "PASS" and tl_cp["status"] != "ok":
        verdict = "PASS (tensorly unfinished)"
    out.append(
        {
            "goal": f"CP ≤ {CP_GOAL_SECONDS:g} s at error ≤ tensorly's",
            "status": verdict,
            "detail": f"{fmt_seconds(ours['seconds'])}, error {ours['error']:.5f} vs "
            f"{against} {fmt_error(reference)}",
        }
    )
    tk = results["tucker2"]
    ours_t, tl_t = tk["tensorops_tucker2"], tk["tensorly_partial_tucker"]
    if tl_t["status"] == "ok":
        verdict = "PASS" if ours_t["seconds"] <= tl_t["seconds"] else "MISS"
        detail = (
            f"{fmt_seconds(ours_t['seconds'])} (error {ours_t['error']:.5f}) vs "
            f"{fmt_seconds(tl_t['seconds'])} (error {tl_t['error']:.5f}), "
            f"{tl_t['seconds'] / ours_t['seconds']:.1f}x"
        )
    else:
        verdict, detail = "UNKNOWN", f"partial_tucker: {tl_seconds_cell(tl_t)}"
    out.append(
        {"goal": "Tucker-2 no slower than partial_tucker", "status": verdict, "detail": detail}
    )
    ev = results["evbmf"]["tensorops_evbmf"]
    out.append(
        {
            "goal": f"EVBMF < {EVBMF_GOAL_SECONDS:g} s",
            "status": "PASS" if ev["seconds"] < EVBMF_GOAL_SECONDS else "MISS",
            "detail": f"{fmt_seconds(ev['seconds'])}, rank {ev['rank']} "
            f"(planted {results['evbmf']['planted_rank']})",
        }
    )
    return out


def blas_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "num_threads", "version", "prefix")
    return [{k: pool.get(k) for k in keep} for pool in threadpool_info()]


def output_path(out: str, quick: bool) -> Path:
    path = Path(out)
    if path.suffix == ".json":
        return path
    return path / ("decompositions_quick.json" if quick else "decompositions.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument(
        "--out",
        default="bench/results",
        help="JSON file, or folder for decompositions[_quick].json (default: bench/results)",
    )
    parser.add_argument(
        "--tl-timeout",
        type=float,
        default=None,
        help="seconds allowed to each tensorly subprocess (default 600, 60 with --quick)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="repeats for cheap timings")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads for tensorops (default: torch's own choice)",
    )
    parser.add_argument("--tl-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tl_worker:
        tl_worker(args.tl_worker)
        return 0

    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    make = quick_config if args.quick else full_config
    cfg = make(args.tl_timeout, args.repeats)
    machine = machine_info()
    machine["blas"] = blas_info()
    vers = versions()
    print("# tensorops decomposition benchmark" + (" (--quick)" if args.quick else ""))
    print("\n## Machine and versions\n")
    blas = ", ".join(
        f"{p['internal_api']} {p['version'] or ''} ({p['num_threads']} threads)".replace("  ", " ")
        for p in machine["blas"]
    )
    pressure = machine["cpu_pressure"]
    rows: list[list[object]] = [
        ["CPU", machine["cpu"]],
        ["cores", machine["cores"]],
        ["torch.get_num_threads()", machine["torch_threads"]],
        ["BLAS (threadpoolctl)", blas or "-"],
        ["load average (1/5/15 min)", " ".join(f"{v:.2f}" for v in machine["load_average_1_5_15"])],
        [
            "CPU pressure, PSI some avg10/60/300 (%)",
            " ".join(f"{v:.1f}" for v in pressure.values()) or "-",
        ],
    ]
    rows.extend([name, version] for name, version in vers.items())
    print(markdown_table(["", ""], rows))
    sys.stdout.flush()

    warm_up()
    kernel = trained_like_kernel(cfg.channels, cfg.channels, seed=0)
    results: dict[str, Any] = {"config": asdict(cfg), "machine": machine, "versions": vers}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_decompositions_") as tmp:
        workdir = Path(tmp)
        results["cp"] = bench_cp(cfg, kernel, workdir)
        print_cp(cfg, results["cp"])
        sys.stdout.flush()
        results["tucker2"] = bench_tucker(cfg, kernel, workdir)
        print_tucker(cfg, results["tucker2"])
        sys.stdout.flush()
    results["evbmf"] = bench_evbmf(cfg)
    print_evbmf(cfg, results["evbmf"])
    sys.stdout.flush()
    results["vgg16"] = bench_vgg(cfg)
    print_vgg(cfg, results["vgg16"])

    results["goals"] = goals(results)
    print("\n## Goals\n")
    print(
        markdown_table(
            ["goal", "status", "measured"],
            [[g["goal"], g["status"], g["detail"]] for g in results["goals"]],
        )
    )
    try:
        load_after = list(os.getloadavg())
    except OSError:
        load_after = []
    results["load_average_after"] = load_after
    results["cpu_pressure_after"] = cpu_pressure()
    results["total_seconds"] = time.perf_counter() - started
    print(
        f"\nTotal {results['total_seconds']:.0f} s; load average after: "
        + " ".join(f"{v:.2f}" for v in load_after)
        + "; CPU pressure after (PSI some avg10/60/300 %): "
        + " ".join(f"{v:.1f}" for v in results["cpu_pressure_after"].values())
        + ". Timings are wall-clock and noisy when other processes share the cores."
    )
    path = output_path(args.out, args.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"Results written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
