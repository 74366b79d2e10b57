"""Real data at real size (issue 15): search wall time, peak memory and held-out drops.

Usage::

    .venv/bin/python bench/bench_scale.py [--runs memory sizes seeds] [--out DIR]
        [--sizes 5000 20000 55000] [--seeds 1 2] [--start-epochs 8]
    .venv/bin/python bench/bench_scale.py --report bench/results/scale/scale.jsonl

Every number comes from ``rankopt`` itself, run as a user runs it (``rankopt train``, then
``rankopt compress`` in a child process per run), on Fashion-MNIST from Debian's
``dataset-fashion-mnist``. The starting ``rankopt:lenet5`` is trained once on the built-in
``fashion-mnist`` training split (split seed 0: 55,000 training images, 5,000 validation
images carved out of the official 60,000, the official 10,000 as test).

* ``memory``: peak RSS of the compressing process with the data held in memory (the built-in
  ``fashion-mnist``) and streamed from an image folder of the same 70,000 images written out as
  PNGs (``folder:``; ``train/`` with the 60,000 official training images, ``test/`` with the
  10,000 test images), side by side, with a short search (``--short-trials`` trials, one
  verified candidate of one epoch) since the peak does not grow with the trial count.
* ``sizes``: wall time and peak RSS of the default search (40 trials, every default) with
  the first 5,000, 20,000 and all 55,000 images of a seeded permutation of the training split
  (an ``.npz`` with the built-in's preprocessing; validation and test as the built-in's).
* ``capped``: the default search on all 55,000 with ``--final-samples`` at the smallest size
  (5,000 examples per epoch of each final fine-tune), the one option that bounds the final
  phase (by default it reads the whole training split every epoch).
* ``seeds``: the default search on all 55,000 with search seeds ``--seeds`` (seed 0 is the
  55,000 run of ``sizes``): validation drop (what the search chose on) beside test drop (data
  the search never read), at the default 1-point tolerance.

Each run is appended to ``<out>/scale.jsonl`` when it ends, with the load average before and
after; a rerun skips the runs already there, so the benchmark resumes after a stop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, markdown_table, print_machine, versions

ROOT = Path(__file__).resolve().parent.parent
RANKOPT = ROOT / ".venv" / "bin" / "rankopt"
ARCH = "rankopt:lenet5"


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _commit() -> str:
    """The checked-out commit (``+dirty`` with uncommitted changes)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "diff", "--quiet", "HEAD", "--", "worker", "service", "tensorops"]
    )
    return head.stdout.strip() + ("+dirty" if dirty.returncode else "")


def run_child(argv: list[str], log: Path) -> tuple[int, float, float]:
    """Run ``argv`` with its output in ``log``; (exit status, wall seconds, peak RSS in MiB)."""
    started = time.monotonic()
    with log.open("w") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, time.monotonic() - started, usage.ru_maxrss / 1024.0


def start_model(out: Path, epochs: int) -> Path:
    """``rankopt train`` lenet5 on the built-in fashion-mnist (cached in ``out``)."""
    weights = out / "start.safetensors"
    if not weights.exists():
        argv = [str(RANKOPT), "train", "--arch", ARCH, "--dataset", "fashion-mnist"]
        argv += ["--epochs", str(epochs), "--out", str(weights)]
        status, wall, _ = run_child(argv, out / "train.log")
        if status != 0:
            raise SystemExit(f"training failed ({status}); see {out / 'train.log'}")
        print(f"trained the start model in {wall:.0f} s", flush=True)
    return weights


def subset_npz(out: Path, n_train: int) -> Path:
    """The built-in split with the first ``n_train`` of a seeded permutation of its training
    images, as an ``.npz`` of the built-in's preprocessed float32 arrays."""
    path = out / f"fashion-{n_train}.npz"
    if path.exists():
        return path
    from worker.data import open_dataset

    splits = open_dataset("fashion-mnist", split_seed=0)

    def arrays(dataset: Any, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        index = range(len(dataset)) if keep is None else keep
        pairs = [dataset[int(i)] for i in index]
        x = np.stack([np.asarray(p[0], dtype=np.float32) for p in pairs])
        return x, np.asarray([int(p[1]) for p in pairs], dtype=np.int64)

    order = np.random.default_rng(0).permutation(len(splits.train))[:n_train]
    x_train, y_train = arrays(splits.train, order)
    x_val, y_val = arrays(splits.val)
    assert splits.test is not None
    x_test, y_test = arrays(splits.test)
    np.savez(
        path,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
    )
    return path


def png_folder(out: Path) -> Path:
    """Fashion-MNIST as ``train/<class>/*.png`` (60,000) and ``test/<class>/*.png`` (10,000)."""
    root = out / "fashion-png"
    done = root / ".complete"
    if done.exists():
        return root
    from PIL import Image

    from worker.data._builtin import FASHION_MNIST_DIR, _read_idx_pair

    for split in ("train", "test"):
        images, labels = _read_idx_pair(FASHION_MNIST_DIR, split)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / f"class{int(label)}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0], mode="L").save(folder / f"{i:05d}.png")
    done.touch()
    return root


def compress(out: Path, name: str, weights: Path, dataset: str, extra: list[str]) -> dict[str, Any]:
    """One ``rankopt compress`` run; its measurements and the report's figures."""
    run_dir = out / name
    argv = [str(RANKOPT), "compress", "--arch", ARCH, "--weights", str(weights)]
    argv += ["--dataset", dataset, "--out", str(run_dir), "--data-root", str(out), *extra]
    load_before = _load()
    status, wall, rss = run_child(argv, out / f"{name}.log")
    row: dict[str, Any] = {
        "name": name,
        "argv": argv[1:],
        "status": status,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(rss, 1),
        "load_before": load_before,
        "load_after": _load(),
        "commit": _commit(),
    }
    report_file = run_dir / "report.json"
    if status == 0 and report_file.exists():
        row.update(figures(json.loads(report_file.read_text()), wall))
    return row


def figures(report: dict[str, Any], wall: float) -> dict[str, Any]:
    """What a run's ``report.json`` says: sizes, drops, and where the time went (the trials
    run one after another in the one process, so the rest is prepare and finalise)."""
    final, base = report["final"], report["baseline"]
    trials_s = sum(t.get("duration_s") or 0.0 for t in report["trials"])
    calibration_s = float((report.get("lr_calibration") or {}).get("seconds") or 0.0)
    return {
        "params_ratio": report["ratios"]["params"],
        "baseline_val": base.get("val_accuracy"),
        "baseline_test": base.get("test_accuracy"),
        "val_drop": final.get("val_accuracy_drop", final["accuracy_drop"]),
        "test_drop": final.get("test_accuracy_drop"),
        "n_train": report["data"].get("train"),
        "trials": len(report["trials"]),
        "trials_s": round(trials_s, 1),
        "calibration_s": round(calibration_s, 1),
        "rest_s": round(wall - trials_s - calibration_s, 1),
        "final_fine_tunes": len(report["verification"]) + len(report["spend"].get("steps", [])),
    }


def plan(args: argparse.Namespace, out: Path, weights: Path) -> list[tuple[str, str, list[str]]]:
    """(name, dataset, extra options) of every run asked for, in order."""
    runs: list[tuple[str, str, list[str]]] = []
    short = ["--trials", str(args.short_trials), "--verify-top", "1", "--final-epochs", "1"]
    if "memory" in args.runs:
        runs.append(("memory-builtin", "fashion-mnist", short))
        # PNGs of 28x28 grayscale: one channel at LeNet-5's side (folders default to 32)
        folder = f"folder:{png_folder(out)}"
        runs.append(("memory-folder", folder, [*short, "--image-size", "28"]))
    if "sizes" in args.runs:
        for n in args.sizes:
            runs.append((f"size-{n}", str(subset_npz(out, n)), ["--seed", "0"]))
    if "capped" in args.runs:  # the final fine-tunes capped at the smallest size's split
        capped = ["--seed", "0", "--final-samples", str(min(args.sizes))]
        runs.append((f"capped-{max(args.sizes)}", str(subset_npz(out, max(args.sizes))), capped))
    if "seeds" in args.runs:
        full = str(subset_npz(out, max(args.sizes)))
        runs.extend((f"seed-{s}", full, ["--seed", str(s)]) for s in args.seeds)
    return runs


def report(results: Path) -> None:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    for r in rows:  # rows written before the time split was recorded
        file = results.parent / r["name"] / "report.json"
        if "trials_s" not in r and r["status"] == 0 and file.exists():
            r.update(figures(json.loads(file.read_text()), r["wall_s"]))
    table = [
        [
            r["name"],
            r.get("n_train", "-"),
            r.get("trials", "-"),
            f"{r['wall_s'] / 60:.1f}",
            " / ".join(f"{r.get(k, 0) / 60:.1f}" for k in ("calibration_s", "trials_s", "rest_s")),
            r.get("final_fine_tunes", "-"),
            f"{r['peak_rss_mib']:.0f}",
            f"{r['params_ratio']:.2f}x" if "params_ratio" in r else f"exit {r['status']}",
            r.get("val_drop", "-") if r.get("val_drop") is None else f"{r['val_drop']:.2f}",
            "-" if r.get("test_drop") is None else f"{r['test_drop']:.2f}",
            f"{r['load_before']}/{r['load_after']}",
        ]
        for r in rows
    ]
    headers = ["run", "train", "trials", "minutes", "calibration / trials / rest"]
    headers += ["final fine-tunes", "peak RSS MiB", "params ratio"]
    headers += ["val drop", "test drop", "load before/after"]
    print(markdown_table(headers, table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=["memory", "sizes", "capped", "seeds"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[5000, 20000, 55000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--short-trials", type=int, default=3)
    parser.add_argument("--start-epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale")
    parser.add_argument("--report", type=Path, default=None, help="print the table of a jsonl")
    args = parser.parse_args(argv)
    if args.report is not None:
        report(args.report)
        return 0
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print_machine(machine_info(), versions())
    results = out / "scale.jsonl"
    done = set()
    if results.exists():
        done = {json.loads(line)["name"] for line in results.read_text().splitlines() if line}
    weights = start_model(out, args.start_epochs)
    for name, dataset, extra in plan(args, out, weights):
        if name in done:
            continue
        print(f"{name}: rankopt compress --dataset {dataset} {' '.join(extra)}", flush=True)
        row = compress(out, name, weights, dataset, extra)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
