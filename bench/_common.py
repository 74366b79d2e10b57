"""Shared helpers for the benchmarks: machine and version info, timing, markdown tables."""

from __future__ import annotations

import hashlib
import importlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_pressure() -> dict[str, float]:
    """Linux PSI for the CPU (``some`` line of /proc/pressure/cpu): the share of time in which
    at least one runnable task waited for a core. High values mean the timings are contended."""
    try:
        with open("/proc/pressure/cpu", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("some"):
                    fields = dict(item.split("=") for item in line.split()[1:])
                    return {k: float(v) for k, v in fields.items() if k.startswith("avg")}
    except (OSError, ValueError):
        pass
    return {}


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores visible to this process, torch threads, load average."""
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 0
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": load,
        "cpu_pressure": cpu_pressure(),
        "platform": platform.platform(),
    }


def source_digest(package: str) -> str:
    """sha256 (first 16 hex digits) over the package's ``.py`` files, to tie results to code."""
    module = importlib.import_module(package)
    root = Path(module.__file__ or "").parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of python and the numerical libraries the benchmarks compare."""
    import numpy
    import scipy
    import tensorly
    import torch

    return {
        "tensorops source sha256": source_digest("tensorops"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "tensorly": tensorly.__version__,
    }


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall-clock seconds of one call of ``fn`` and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median_time(fn: Callable[[], T], repeats: int) -> tuple[float, list[float], T]:
    """Median seconds over ``repeats`` calls, every time, and the last call's result."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times: list[float] = []
    result: T | None = None
    for _ in range(repeats):
        elapsed, result = timed(fn)
        times.append(elapsed)
    assert result is not None
    return statistics.median(times), times, result


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; cells are rendered with ``str``."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(widths[i]) for i, v in enumerate(values)) + " |"

    out = [line(list(headers)), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 10:
        return f"{seconds:.3f} s"
    return f"{seconds:.1f} s"


def fmt_error(error: float | None) -> str:
    return "-" if error is None else f"{error:.5f}"


def print_machine(
    machine: dict[str, Any],
    vers: dict[str, str],
    *,
    heading: str = "Machine and versions",
    threads_label: str = "torch.get_num_threads()",
) -> None:
    """Print the machine (CPU, cores, threads, load, CPU pressure) and versions as a table."""
    import optuna

    print(f"\n## {heading}\n")
    pressure = machine["cpu_pressure"]
    rows: list[list[object]] = [
        ["CPU", machine["cpu"]],
        ["cores", machine["cores"]],
        [threads_label, machine["torch_threads"]],
        ["load average (1/5/15 min)", " ".join(f"{v:.2f}" for v in machine["load_average_1_5_15"])],
        [
            "CPU pressure, PSI some avg10/60/300 (%)",
            " ".join(f"{v:.1f}" for v in pressure.values()) or "-",
        ],
        ["optuna", optuna.__version__],
    ]
    rows.extend([name, version] for name, version in vers.items())
    print(markdown_table(["", ""], rows))
