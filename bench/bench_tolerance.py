"""Does the search spend the tolerance? rankopt before/after against greedy ratio selection.

Usage::

    .venv/bin/python bench/bench_tolerance.py [--seeds 0 1 2] [--trials 8 20 40]
        [--variants before after greedy] [--train 20000] [--val 5000] [--out DIR]
    .venv/bin/python bench/bench_tolerance.py --report bench/results/tolerance.jsonl

Setting (issue 21): Fashion-MNIST from Debian's ``dataset-fashion-mnist``, a seeded stratified
``--train`` subset of the official training images for fine-tuning, ``--val`` other training
images for every decision (search, verification, the greedy baseline's choices), and the
official 10,000 test images read only here, after each method has chosen. ``rankopt:lenet5``
trained once per split seed (``--start-epochs``). Tolerance ``--tolerance`` points (1.0).

Methods, all with the same fine-tune (``--final-epochs`` of the search's cyclic schedule,
distillation from the original, the learning-rate multiplier rankopt's calibration picks):

* ``after``: rankopt's default search (ratio seeds, spending the margin);
* ``before``: the same with ``ratio_targets=()`` and ``spend_steps=0``, i.e. the search as it
  was before those two devices (sensitivity seeds scanned only to the largest budget);
* ``greedy``: greedy per-layer ratio selection, the heuristic of AIMET's weight-SVD auto mode:
  for each target ratio of a ladder the per-layer ranks come from the sensitivity curves
  (each layer compressed alone, scored on the validation split, no fine-tuning in the loop),
  then the plan is fine-tuned once; the result is the most compressed rung whose validation
  drop is within the tolerance. Its cost is counted in fine-tunes, beside the searches' trials.

Every run is appended to ``<out>/tolerance.jsonl`` as soon as it ends; a rerun skips the runs
already there (same method, seed, trials), so the benchmark resumes after a stop.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from _common import cpu_pressure, machine_info, markdown_table, print_machine, versions
from torch import nn

from tensorops import load_compressed
from worker.data import DataBundle
from worker.search import SearchConfig, finalize, open_study, prepare, run_trials
from worker.search._config import drop_points
from worker.search._ratio_seeds import ratio_seeds
from worker.search._space import plan_from_params
from worker.training import EvalResult, evaluate, train
from worker.zoo import get_model

FASHION = Path("/usr/share/datasets/fashion-mnist")
ARCH = "rankopt:lenet5"
LADDER = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0, 32.0)
MEAN, STD = 0.2860, 0.3530


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _images(x: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(x.astype(np.float32)) / 255.0 - MEAN) / STD).unsqueeze(1)


def load_fashion(
    n_train: int, n_val: int, split_seed: int
) -> tuple[DataBundle, tuple[torch.Tensor, torch.Tensor]]:
    """Train/val carved from the official training set (seeded, stratified), and the test."""
    if not FASHION.is_dir():
        raise SystemExit(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
    x = _idx(FASHION / "train-images-idx3-ubyte.gz")
    y = _idx(FASHION / "train-labels-idx1-ubyte.gz").astype(np.int64)
    rng = np.random.default_rng(split_seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in range(10):
        members = rng.permutation(np.flatnonzero(y == label))
        n_v, n_t = n_val // 10, n_train // 10
        val_idx += members[:n_v].tolist()
        train_idx += members[n_v : n_v + n_t].tolist()
    train_sel, val_sel = np.array(sorted(train_idx)), np.array(sorted(val_idx))
    bundle = DataBundle(
        name=f"fashion-mnist[{n_train}/{n_val}, split {split_seed}]",
        x_train=_images(x[train_sel]),
        y_train=torch.from_numpy(y[train_sel]),
        x_val=_images(x[val_sel]),
        y_val=torch.from_numpy(y[val_sel]),
        num_classes=10,
    )
    xt = _images(_idx(FASHION / "t10k-images-idx3-ubyte.gz"))
    yt = torch.from_numpy(_idx(FASHION / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    return bundle, (xt, yt)


def start_model(data: DataBundle, epochs: int, out: Path, split_seed: int) -> nn.Module:
    path = out / f"lenet5_fashion_{len(data.y_train)}_{split_seed}.pt"
    model = get_model(ARCH, num_classes=10, in_channels=1)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(split_seed)
    train(model, data, epochs=epochs, optimizer="adamw", lr=0.01, device="cpu", seed=split_seed)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def make_config(args: argparse.Namespace, seed: int, trials: int, variant: str) -> SearchConfig:
    extra: dict[str, Any] = {}
    if variant == "before":
        extra = {"ratio_targets": (), "spend_steps": 0}
    return SearchConfig(
        trials=trials,
        max_accuracy_drop=args.tolerance,
        epochs_per_trial=args.epochs_per_trial,
        final_epochs=args.final_epochs,
        seed=seed,
        device="cpu",
        **extra,
    )


def run_search(
    args: argparse.Namespace,
    model: nn.Module,
    data: DataBundle,
    test: tuple[torch.Tensor, torch.Tensor],
    seed: int,
    trials: int,
    variant: str,
    out: Path,
) -> dict[str, Any]:
    config = make_config(args, seed, trials, variant)
    started = time.perf_counter()
    ctx = prepare(copy.deepcopy(model), data, config)
    study = open_study(ctx, storage=optuna.storages.InMemoryStorage(), study_name="bench")
    run_trials(ctx, study)
    result = finalize(ctx, study, out / f"{variant}_{seed}_{trials}", arch={"arch": ARCH})
    seconds = time.perf_counter() - started
    small = load_compressed(result.checkpoint)
    base_test = evaluate(model, test, device="cpu").accuracy
    final_test = evaluate(small, test, device="cpu").accuracy
    report = result.report
    return {
        "params_ratio": report["ratios"]["params"],
        "macs_ratio": report["ratios"]["macs"],
        "val_drop": report["final"]["accuracy_drop"],
        "test_drop": drop_points(base_test, final_test),
        "baseline_test": base_test,
        "seconds": seconds,
        "spend": report.get("spend"),
        "chosen_seed": _chosen_label(study, report.get("chosen_trial")),
    }


def _chosen_label(study: optuna.Study, number: int | None) -> str | None:
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return str(t.user_attrs.get("seed", "sampler"))
    return None


def run_greedy(
    args: argparse.Namespace,
    model: nn.Module,
    data: DataBundle,
    test: tuple[torch.Tensor, torch.Tensor],
    seed: int,
) -> dict[str, Any]:
    started = time.perf_counter()
    config = make_config(args, seed, 1, "greedy")
    ctx = prepare(copy.deepcopy(model), data, config)
    ctx.calibrate_lr()
    sensitivity = ctx.seed_sensitivity()
    base_test = evaluate(model, test, device="cpu").accuracy
    rungs: list[dict[str, Any]] = []
    misses = 0
    for target in LADDER:
        seeds = ratio_seeds(
            ctx.model, ctx.spaces, ctx.layers, replace(config, ratio_targets=(target,)), sensitivity
        )
        if not seeds:
            break
        plan = plan_from_params(ctx.model, ctx.spaces, seeds[0][1], config)
        small = ctx.compress(plan)
        fit = ctx.finetune(small, epochs=args.final_epochs, seed=seed)
        val = EvalResult(fit.final_val_accuracy, fit.final_val_loss, len(data.y_val))
        val_drop = drop_points(ctx.baseline_accuracy, val.accuracy)
        test_drop = drop_points(base_test, evaluate(small, test, device="cpu").accuracy)
        rungs.append(
            {
                "target": target,
                "params_ratio": ctx.compression(plan),
                "val_drop": val_drop,
                "test_drop": test_drop,
            }
        )
        misses = misses + 1 if val_drop > args.tolerance else 0
        if misses == 2:
            break
    within = [r for r in rungs if r["val_drop"] <= args.tolerance]
    best = max(within, key=lambda r: r["params_ratio"]) if within else None
    return {
        "params_ratio": best["params_ratio"] if best else 1.0,
        "val_drop": best["val_drop"] if best else 0.0,
        "test_drop": best["test_drop"] if best else 0.0,
        "baseline_test": base_test,
        "seconds": time.perf_counter() - started,
        "fine_tunes": len(rungs),
        "rungs": rungs,
    }


def _done(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(rows: Sequence[dict[str, Any]], tolerance: float) -> None:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["trials"]), []).append(row)

    def spread(values: list[float], fmt: str) -> str:
        if len(values) == 1:
            return format(values[0], fmt)
        mean, low, high = statistics.mean(values), min(values), max(values)
        return f"{format(mean, fmt)} ({format(low, fmt)}–{format(high, fmt)})"

    table = []
    for (variant, trials), runs in sorted(groups.items()):
        used = [100 * max(r["test_drop"], 0.0) / tolerance for r in runs]
        over = sum(1 for r in runs if r["test_drop"] > tolerance + 0.5)
        table.append(
            [
                variant,
                trials if variant != "greedy" else f"{runs[0].get('fine_tunes', '?')} fine-tunes",
                len(runs),
                spread([r["params_ratio"] for r in runs], ".2f") + "x",
                spread([r["val_drop"] for r in runs], ".2f"),
                spread([r["test_drop"] for r in runs], ".2f"),
                spread(used, ".0f") + "%",
                over,
                spread([r["seconds"] / 60 for r in runs], ".1f"),
            ]
        )
    print(
        markdown_table(
            [
                "method",
                "trials",
                "seeds",
                "params ratio",
                "val drop",
                "test drop",
                "tolerance used (test)",
                "seeds > tol+0.5 (test)",
                "minutes",
            ],
            table,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, nargs="+", default=[8, 20, 40])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["greedy", "after", "before"],
        choices=["greedy", "after", "before"],
    )
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--val", type=int, default=5000)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--start-epochs", type=int, default=15)
    parser.add_argument("--epochs-per-trial", type=int, default=1)
    parser.add_argument("--final-epochs", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tolerance"))
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.report is not None:
        report(_done(args.report), args.tolerance)
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(2)
    print_machine(machine_info(), versions())
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "tolerance.jsonl"
    data, test = load_fashion(args.train, args.val, args.split_seed)
    model = start_model(data, args.start_epochs, args.out, args.split_seed)
    base = evaluate(model, test, device="cpu").accuracy
    print(f"start model: test accuracy {100 * base:.2f}% ({data.name})", flush=True)
    done = {(r["variant"], r["seed"], r["trials"]) for r in _done(log)}
    for seed in args.seeds:
        for variant in args.variants:
            for trials in args.trials if variant != "greedy" else [0]:
                if (variant, seed, trials) in done:
                    continue
                load = cpu_pressure()
                if variant == "greedy":
                    row = run_greedy(args, model, data, test, seed)
                else:
                    row = run_search(args, model, data, test, seed, trials, variant, args.out)
                row.update(variant=variant, seed=seed, trials=trials, load_before=load)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(
                    f"{variant} seed {seed} trials {trials}: {row['params_ratio']:.2f}x, val "
                    f"drop {row['val_drop']:.2f}, test drop {row['test_drop']:.2f}, "
                    f"{row['seconds'] / 60:.1f} min",
                    flush=True,
                )
    report(_done(log), args.tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
