"""Benchmark rankopt's search against its ablations and a one-shot EVBMF + Tucker-2 baseline.

Usage::

    .venv/bin/python bench/bench_search.py [--quick] [--arch ARCH [ARCH ...]] [--trials 20]
        [--seeds 0 [1 ...]] [--out bench/results] [--constant-lr LR]

By default both ``rankopt:lenet5`` and the VGG-style ``rankopt:minivgg`` run, one after the
other, in one command.

For every seed the starting model is trained once on mnist5k (AdamW, lr 0.01, one-cycle), and
then, from copies of that same trained model, on the same data and with the same seed, six
searches run one after the other, each with the same fine-tuning budget per candidate (same
``epochs_per_trial``, ``final_epochs``, batch size and optimizer):

* ``rankopt``: the defaults of :class:`SearchConfig` (TPE, EVBMF seeding, MTD = every
  applicable method per layer, triangular2 cyclic LR), ``trials=N``;
* ``no-seeding``: the same without the EVBMF seed plans;
* ``random``: random sampling, no seeding;
* ``tucker-only``: no MTD, each layer picks only between keep, Tucker-2 and SVD;
* ``constant-lr``: a constant learning rate instead of the cyclic one (by default the mean
  rate of the cyclic schedule over one trial's fine-tuning, so the average step is the same);
* ``one-shot``: Kim et al. (2016): only the ``evbmf-tucker2`` seed plan, compressed and
  fine-tuned with the final budget (a study with one trial and seeding on; its allowed drop is
  lifted so the plan is kept whatever its accuracy, as in the paper).

Each study lives in an ``optuna.storages.InMemoryStorage``; finalisation writes into a
temporary folder. The allowed accuracy drop is 1.0 point; the best trial at 0.5 points is read
from the same study's trials. The search-efficiency curve of a run is the best feasible
compression (drop ≤ 1.0, completed trials) after each trial, in trial order.

Goals: ``rankopt`` reaches random search's best-after-all-trials within N/4 trials, and its
final parameter compression is at least 1.5x the one-shot's. Finalising may fine-tune up to
``verify_top + 1`` candidates for the final budget before choosing (the one-shot run has one);
the table counts them.

Prints markdown tables (machine and versions first), writes the numbers to
``<out>/search_<arch>[_quick].json`` and the curves to ``<out>/search_<arch>[_quick].png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from _common import cpu_pressure, machine_info, markdown_table, print_machine, versions
from torch import nn

from worker.data import DataBundle, load_dataset
from worker.search import SearchConfig, finalize, open_study, prepare, run_trials
from worker.training import ScheduleConfig, lr_at, train
from worker.zoo import get_model

DATASET = "mnist5k"
MAX_DROP = 1.0
ALT_DROP = 0.5
SPEED_GOAL_FRACTION = 0.25  # rankopt must reach random's best within N/4 trials
ONE_SHOT_GOAL_FACTOR = 1.5  # rankopt's ratio must be >= 1.5x the one-shot's
ONE_SHOT_SEED = "evbmf-tucker2"
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


@dataclass(frozen=True)
class BenchConfig:
    arch: str
    trials: int
    epochs_per_trial: int
    final_epochs: int
    batch_size: int
    train_epochs: int
    max_train: int | None
    seeds: tuple[int, ...]
    constant_lr: float | None  # None: the cyclic schedule's mean over one trial
    quick: bool


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    config: SearchConfig


def make_config(args: argparse.Namespace, arch: str) -> BenchConfig:
    if args.quick:
        return BenchConfig(
            arch=arch,
            trials=args.trials if args.trials is not None else 4,
            epochs_per_trial=1,
            final_epochs=1,
            batch_size=64,
            train_epochs=2,
            max_train=1000,
            seeds=tuple(args.seeds),
            constant_lr=args.constant_lr,
            quick=True,
        )
    return BenchConfig(
        arch=arch,
        trials=args.trials if args.trials is not None else 20,
        epochs_per_trial=2,
        final_epochs=6,
        batch_size=64,
        train_epochs=8,
        max_train=None,
        seeds=tuple(args.seeds),
        constant_lr=args.constant_lr,
        quick=False,
    )


def mean_cyclic_lr(schedule: ScheduleConfig, epochs: int, steps_per_epoch: int) -> float:
    """Mean learning rate of ``schedule`` over ``epochs`` epochs of ``steps_per_epoch`` steps."""
    steps = max(epochs * steps_per_epoch, 1)
    return sum(lr_at(schedule, step, steps_per_epoch) for step in range(steps)) / steps


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps per epoch (the loop merges a last batch of one into the one before)."""
    full, rest = divmod(n_train, batch_size)
    return max(full + (1 if rest > 1 else 0), 1)


def variants(cfg: BenchConfig, seed: int, data: DataBundle) -> list[Variant]:
    base = SearchConfig(
        trials=cfg.trials,
        max_accuracy_drop=MAX_DROP,
        seed=seed,
        epochs_per_trial=cfg.epochs_per_trial,
        final_epochs=cfg.final_epochs,
        batch_size=cfg.batch_size,
        device="cpu",
    )
    lr = cfg.constant_lr
    if lr is None:
        spe = steps_per_epoch(int(data.y_train.shape[0]), cfg.batch_size)
        lr = mean_cyclic_lr(base.schedule, cfg.epochs_per_trial, spe)
    return [
        Variant("rankopt", "TPE, EVBMF seeding, MTD, triangular2 cyclic LR", base),
        Variant("no-seeding", "rankopt without the EVBMF seed plans", replace(base, seeding=False)),
        Variant(
            "random", "random sampler, no seeding", replace(base, sampler="random", seeding=False)
        ),
        Variant(
            "tucker-only",
            "no MTD: keep / Tucker-2 / SVD",
            replace(base, methods=("tucker2", "svd")),
        ),
        Variant(
            "constant-lr",
            f"constant LR {lr:.2e} instead of cyclic",
            replace(base, schedule=ScheduleConfig.constant(lr)),
        ),
        Variant(
            "one-shot",
            "Kim et al. 2016: the evbmf-tucker2 seed plan, final fine-tune only",
            replace(base, trials=1, max_accuracy_drop=100.0),
        ),
    ]


def feasible(record: dict[str, Any], max_drop: float) -> bool:
    drop = record.get("accuracy_drop")
    return record["state"] == "COMPLETE" and drop is not None and drop <= max_drop


def efficiency_curve(records: Sequence[dict[str, Any]], max_drop: float) -> list[float | None]:
    """Best feasible compression after each trial, in trial order (None before the first)."""
    best: float | None = None
    curve: list[float | None] = []
    for record in sorted(records, key=lambda r: r["number"]):
        if feasible(record, max_drop):
            ratio = float(record["compression"])
            best = ratio if best is None else max(best, ratio)
        curve.append(best)
    return curve


def best_trial(records: Sequence[dict[str, Any]], max_drop: float) -> dict[str, Any] | None:
    """The feasible trial with the highest compression (the lowest number on a tie)."""
    candidates = [r for r in records if feasible(r, max_drop)]
    if not candidates:
        return None
    best = max(candidates, key=lambda r: (r["compression"], -r["number"]))
    return {
        "number": best["number"],
        "seed": best["seed"],
        "compression": best["compression"],
        "accuracy": best["accuracy"],
        "accuracy_drop": best["accuracy_drop"],
    }


def run_variant(
    variant: Variant,
    model: nn.Module,
    data: DataBundle,
    arch: dict[str, Any],
    *,
    max_drop: float = MAX_DROP,
) -> dict[str, Any]:
    """One study in memory, trials, finalisation; the numbers this benchmark reports.

    ``max_drop`` is the tolerance the run is judged at (the one-shot run lifts its search
    tolerance, so it is passed separately).
    """
    config = variant.config
    started = time.perf_counter()
    ctx = prepare(copy.deepcopy(model), data, config)
    study = open_study(
        ctx, storage=optuna.storages.InMemoryStorage(), study_name=f"bench-{variant.name}"
    )
    run_trials(ctx, study)
    search_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix=f"bench_search_{variant.name}_") as tmp:
        result = finalize(ctx, study, Path(tmp), arch=arch)
    wall_s = time.perf_counter() - started
    report = result.report
    # Enqueued seed plans the budget never reached stay WAITING; they are not trials run.
    records = [r for r in report["trials"] if r["state"] in FINISHED_STATES]
    final = report["final"]
    chosen = report["chosen_trial"]
    chosen_seed = next((r["seed"] for r in records if r["number"] == chosen), None)
    return {
        "name": variant.name,
        "description": variant.description,
        "search": config.to_dict(),
        "baseline_accuracy": report["baseline"]["accuracy"],
        "final_accuracy": final["accuracy"],
        "final_accuracy_drop": final["accuracy_drop"],
        "params_ratio": report["ratios"]["params"],
        "macs_ratio": report["ratios"]["macs"],
        "max_drop": max_drop,
        "constraint_met": final["accuracy_drop"] <= max_drop,
        "constraint_met_at_0_5": final["accuracy_drop"] <= ALT_DROP,
        "found_feasible": report["found_feasible"],
        "chosen_trial": chosen,
        "chosen_seed": chosen_seed,
        "layers": report["layers"],
        "best_trial_at_1_0": best_trial(records, MAX_DROP),
        "best_trial_at_0_5": best_trial(records, ALT_DROP),
        "curve": efficiency_curve(records, max_drop),
        "trial_states": [r["state"] for r in records],
        "unrun_enqueued": len(report["trials"]) - len(records),
        "verification": report["verification"],
        "lr_calibration": report.get("lr_calibration"),
        "wall_s": wall_s,
        "search_s": search_s,
        "finalize_s": wall_s - search_s,
        "trials": records,
    }


def first_reach(curve: Sequence[float | None], target: float | None) -> int | None:
    """1-based trial after which ``curve`` first reaches ``target`` (None: never).

    With no target (the other run found nothing feasible), any feasible trial reaches it.
    """
    for i, value in enumerate(curve, start=1):
        if value is not None and (target is None or value >= target - 1e-9):
            return i
    return None


def seed_goals(runs: dict[str, dict[str, Any]], trials: int) -> list[dict[str, Any]]:
    ours, rand, one = runs["rankopt"], runs["random"], runs["one-shot"]
    target = rand["curve"][-1] if rand["curve"] else None
    reached = first_reach(ours["curve"], target)
    limit = trials * SPEED_GOAL_FRACTION
    speed_ok = reached is not None and reached <= limit
    target_text = f"{target:.2f}x" if target is not None else "none feasible"
    speed = {
        "goal": f"rankopt reaches random's best within N/4 = {limit:g} trials",
        "status": "PASS" if speed_ok else "MISS",
        "random_best": target,
        "rankopt_trial": reached,
        "limit": limit,
        "detail": f"random's best after {len(rand['curve'])} trials {target_text}; rankopt "
        + (f"reaches it at trial {reached}" if reached is not None else "never reaches it")
        + (" (neither found a feasible plan)" if target is None and reached is None else "")
        + (f" (rankopt best {ours['curve'][-1]:.2f}x)" if ours["curve"][-1] is not None else ""),
    }
    # One-shot's compression *at the tolerance*: its plan's ratio if the plan meets it, else
    # 1.0 (the only model within tolerance that the one-shot recipe yields is the original).
    one_at_tol = one["params_ratio"] if one["constraint_met"] else 1.0
    ours_at_tol = ours["params_ratio"] if ours["constraint_met"] else 1.0
    factor = ours_at_tol / max(one_at_tol, 1e-12)
    raw = ours_at_tol / max(one["params_ratio"], 1e-12)
    one_text = f"{one['params_ratio']:.2f}x, drop {one['final_accuracy_drop']:.2f} pt, " + (
        "met" if one["constraint_met"] else f"NOT met, so 1.00x at {MAX_DROP:g} pt"
    )
    compare = {
        "goal": f"rankopt's params ratio ≥ {ONE_SHOT_GOAL_FACTOR:g}x one-shot's, both at drop ≤ "
        f"{MAX_DROP:g} pt",
        "status": "PASS" if factor >= ONE_SHOT_GOAL_FACTOR else "MISS",
        "factor": factor,
        "detail": f"{ours['params_ratio']:.2f}x (drop {ours['final_accuracy_drop']:.2f} pt, "
        f"{'met' if ours['constraint_met'] else 'NOT met'}) vs one-shot {one_text}: "
        f"{factor:.2f}x",
    }
    strict = {
        "goal": f"stricter: rankopt's ratio ≥ {ONE_SHOT_GOAL_FACTOR:g}x one-shot's plan even "
        "where that plan misses the tolerance",
        "status": "PASS" if raw >= ONE_SHOT_GOAL_FACTOR else "MISS",
        "factor": raw,
        "detail": f"{ours_at_tol:.2f}x vs {one['params_ratio']:.2f}x: {raw:.2f}x",
    }
    return [speed, compare, strict]


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_trial(best: dict[str, Any] | None) -> str:
    if best is None:
        return "none"
    return f"#{best['number']}: {best['compression']:.2f}x, drop {best['accuracy_drop']:.2f}"


def print_setup(cfg: BenchConfig, data: DataBundle, seeds: dict[int, dict[str, Any]]) -> None:
    print("\n## Setup\n")
    rows: list[list[object]] = [
        ["architecture", cfg.arch],
        ["data", f"{data.name}: {len(data.y_train)} train, {len(data.y_val)} val (split seed 0)"],
        ["starting model", f"train(epochs={cfg.train_epochs}, optimizer=adamw, lr=0.01), cpu"],
        ["trials per search (N)", cfg.trials],
        ["fine-tuning per trial", f"{cfg.epochs_per_trial} epochs"],
        ["final fine-tuning", f"{cfg.final_epochs} epochs"],
        ["batch size, optimizer", f"{cfg.batch_size}, adamw"],
        ["allowed accuracy drop", f"{MAX_DROP:g} pt (also read at {ALT_DROP:g} pt)"],
    ]
    for seed, info in seeds.items():
        rows.append(
            [
                f"seed {seed} baseline",
                f"{100 * info['baseline_accuracy']:.2f}% after {info['train_s']:.1f} s training",
            ]
        )
    print(markdown_table(["", ""], rows))


def print_seed(seed: int, runs: dict[str, dict[str, Any]], cfg: BenchConfig) -> None:
    print(f"\n## Seed {seed}: results\n")
    rows = []
    for run in runs.values():
        rows.append(
            [
                run["name"],
                fmt_ratio(run["params_ratio"]),
                fmt_ratio(run["macs_ratio"]),
                f"{100 * run['final_accuracy']:.2f}%",
                f"{run['final_accuracy_drop']:.2f}",
                "yes" if run["constraint_met"] else "NO",
                run["chosen_seed"] or (f"#{run['chosen_trial']}" if run["found_feasible"] else "-"),
                fmt_trial(run["best_trial_at_1_0"]),
                fmt_trial(run["best_trial_at_0_5"]),
                f"{sum(1 for r in run['trials'] if feasible(r, MAX_DROP))}/{len(run['trials'])}",
                len(run["verification"]),
                f"{run['wall_s']:.1f}",
            ]
        )
    headers = [
        "run",
        "params ratio",
        "MACs ratio",
        "final acc",
        "drop (pt)",
        f"≤ {MAX_DROP:g} pt",
        "chosen",
        f"best trial ≤ {MAX_DROP:g} pt",
        f"best trial ≤ {ALT_DROP:g} pt",
        "feasible trials",
        "final fine-tunes",
        "wall s",
    ]
    print(markdown_table(headers, rows))
    print("\n" + "; ".join(f"`{r['name']}`: {r['description']}" for r in runs.values()))
    print(
        f"\nBest feasible compression (trial estimate, drop ≤ {MAX_DROP:g} pt) after each trial:\n"
    )
    curve_runs = [r for r in runs.values() if r["name"] != "one-shot"]
    curve_rows = []
    for i in range(cfg.trials):
        row: list[object] = [i + 1]
        for run in curve_runs:
            curve = run["curve"]
            row.append(fmt_ratio(curve[i]) if i < len(curve) else "")
        curve_rows.append(row)
    print(markdown_table(["trial", *[r["name"] for r in curve_runs]], curve_rows))
    one = runs["one-shot"]["trials"]
    if one and one[0]["compression"] is not None:
        print(
            f"\none-shot's single trial ({one[0]['seed']}): {one[0]['compression']:.2f}x, drop "
            f"{one[0]['accuracy_drop']:.2f} pt after {cfg.epochs_per_trial} epoch(s) "
            f"({'feasible' if feasible(one[0], MAX_DROP) else 'infeasible'} at {MAX_DROP:g} pt)."
        )
    if cfg.trials <= 5:
        print(
            "\nTPE samples its first 5 trials at random with the same seed, so with N ≤ 5 "
            "`no-seeding` repeats `random` trial for trial."
        )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    seeds = results["seeds"]
    fig, axes = plt.subplots(
        1, len(seeds), figsize=(6 * len(seeds), 4), dpi=110, squeeze=False, sharey=True
    )
    styles = ["-o", "--s", ":^", "-.v", "-D", "--x"]
    for ax, (seed, info) in zip(axes[0], seeds.items()):
        curves = [(name, run) for name, run in info["runs"].items() if name != "one-shot"]
        for (name, run), style in zip(curves, styles):
            curve = [1.0 if v is None else v for v in run["curve"]]
            x = list(range(1, len(curve) + 1))
            ax.step(x, curve, style, where="post", ms=4, alpha=0.8, label=name)
        one = info["runs"].get("one-shot")
        if one is not None:
            if one["curve"] and one["curve"][0] is not None:
                ax.axhline(one["curve"][0], color="#444444", ls="--", lw=1, label="one-shot trial")
            else:
                ax.plot([], [], " ", label=f"one-shot: infeasible at {MAX_DROP:g} pt")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(f"{results['config']['arch']}, seed {seed}")
        ax.set_xlabel("trial")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel(f"best feasible compression (x, drop ≤ {MAX_DROP:g} pt; 1 = none)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def output_stem(arch: str, quick: bool) -> str:
    return "search_" + re.sub(r"[^A-Za-z0-9]+", "_", arch).strip("_") + ("_quick" if quick else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, for a smoke test")
    parser.add_argument(
        "--arch",
        nargs="+",
        default=["rankopt:lenet5", "rankopt:minivgg"],
        help="zoo names of the models, benchmarked one after the other",
    )
    parser.add_argument("--trials", type=int, default=None, help="N (default 20, 4 with --quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    parser.add_argument("--out", default="bench/results", help="folder for the JSON and plot")
    parser.add_argument(
        "--constant-lr",
        type=float,
        default=None,
        help="LR of the constant-lr run (default: the cyclic schedule's mean over one trial)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        help="reprint the tables of saved results (JSON files this script wrote); run nothing",
    )
    args = parser.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        parser.error("--trials must be >= 1")
    if args.report:
        for path in args.report:
            report_from(path)
        return 0

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    machine = machine_info()
    vers = versions()
    print(
        "# rankopt search benchmark: " + ", ".join(args.arch) + (" (--quick)" if args.quick else "")
    )
    print_machine(machine, vers)
    sys.stdout.flush()
    overall = []
    for arch in args.arch:
        cfg = make_config(args, arch)
        print(f"\n# {arch}")
        results = bench_arch(cfg, args, machine, vers)
        overall.extend(
            [arch, *[g[k] for k in ("goal", "status")], f"{g['passes']}/{g['seeds']}"]
            for g in results["goals"]
        )
    if len(args.arch) > 1:
        print("\n# All architectures\n")
        print(markdown_table(["architecture", "goal", "status", "seeds passing"], overall))
    return 0


def print_goals(results: dict[str, Any], cfg: BenchConfig) -> list[dict[str, Any]]:
    """The goal table per seed and, with several seeds, the summary; returns the summary."""
    print("\n## Goals\n")
    goal_rows = []
    summary = []
    for index in range(len(results["seeds"][cfg.seeds[0]]["goals"])):
        passes = 0
        for seed in cfg.seeds:
            goal = results["seeds"][seed]["goals"][index]
            passes += goal["status"] == "PASS"
            goal_rows.append([goal["goal"], seed, goal["status"], goal["detail"]])
        name = results["seeds"][cfg.seeds[0]]["goals"][index]["goal"]
        status = "PASS" if passes == len(cfg.seeds) else "MISS"
        summary.append({"goal": name, "status": status, "passes": passes, "seeds": len(cfg.seeds)})
    print(markdown_table(["goal", "seed", "status", "measured"], goal_rows))
    if len(cfg.seeds) > 1:
        print()
        print(
            markdown_table(
                ["goal", "status", "seeds passing"],
                [[s["goal"], s["status"], f"{s['passes']}/{s['seeds']}"] for s in summary],
            )
        )
    return summary


def report_from(path: Path) -> list[dict[str, Any]]:
    """Print the tables and goals of saved results again (goals recomputed); nothing is run."""
    results = json.loads(path.read_text())
    config = dict(results["config"])
    config["seeds"] = tuple(int(s) for s in config["seeds"])
    cfg = BenchConfig(**config)
    results["seeds"] = {int(k): v for k, v in results["seeds"].items()}
    print(f"\n# {cfg.arch} (from {path})")
    for seed, info in results["seeds"].items():
        info["goals"] = seed_goals(info["runs"], cfg.trials)
        print_seed(seed, info["runs"], cfg)
    summary = print_goals(results, cfg)
    return summary


def train_start_model(
    cfg: BenchConfig, data: DataBundle, kwargs: dict[str, Any], seed: int
) -> tuple[nn.Module, dict[str, Any]]:
    """The starting model of one seed (trained on CPU) and its baseline record."""
    torch.manual_seed(seed)
    model = get_model(cfg.arch, **kwargs)
    fit = train(
        model,
        data,
        epochs=cfg.train_epochs,
        optimizer="adamw",
        lr=0.01,
        device="cpu",
        seed=seed,
    )
    info = {
        "baseline_accuracy": fit.final_val_accuracy,
        "train_s": fit.seconds,
        "train_status": fit.status,
        "runs": {},
    }
    return model.to("cpu").eval(), info


def bench_arch(
    cfg: BenchConfig, args: argparse.Namespace, machine: dict[str, Any], vers: dict[str, str]
) -> dict[str, Any]:
    """Train the starting models and run every variant for every seed of one architecture."""
    started = time.perf_counter()
    data = load_dataset(DATASET, split_seed=0, max_train=cfg.max_train)
    kwargs: dict[str, Any] = {"num_classes": data.num_classes}
    if cfg.arch.startswith("rankopt:"):
        kwargs["in_channels"] = data.input_shape[0]
    arch = {"arch": cfg.arch, "kwargs": kwargs}
    results: dict[str, Any] = {
        "config": asdict(cfg),
        "machine": machine,
        "versions": {**vers, "optuna": optuna.__version__},
        "data": {"name": data.name, "train": len(data.y_train), "val": len(data.y_val)},
        "max_accuracy_drop": MAX_DROP,
        "alt_accuracy_drop": ALT_DROP,
        "seeds": {},
    }
    trained: dict[int, nn.Module] = {}
    for seed in cfg.seeds:
        trained[seed], results["seeds"][seed] = train_start_model(cfg, data, kwargs, seed)
    print_setup(cfg, data, results["seeds"])
    sys.stdout.flush()

    for seed in cfg.seeds:
        info = results["seeds"][seed]
        for variant in variants(cfg, seed, data):
            print(f"[seed {seed}] running {variant.name} ...", file=sys.stderr, flush=True)
            run = run_variant(variant, trained[seed], data, arch)
            info["runs"][variant.name] = run
            print(
                f"[seed {seed}] {variant.name}: {run['params_ratio']:.2f}x params, "
                f"drop {run['final_accuracy_drop']:.2f} pt, {run['wall_s']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        one = info["runs"]["one-shot"]
        if one["chosen_seed"] != ONE_SHOT_SEED:
            print(f"warning: one-shot chose {one['chosen_seed']!r}, not {ONE_SHOT_SEED!r}")
        info["goals"] = seed_goals(info["runs"], cfg.trials)
        print_seed(seed, info["runs"], cfg)
        sys.stdout.flush()

    results["goals"] = print_goals(results, cfg)
    if cfg.quick:
        print(
            "\n--quick: tiny budget (N = "
            f"{cfg.trials}, 1 epoch per trial, {cfg.max_train} training images): "
            "a smoke test, not evidence for or against the goals."
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
        + ". Wall times are noisy when other processes share the cores."
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = output_stem(cfg.arch, cfg.quick)
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    png_path = out / f"{stem}.png"
    plot(results, png_path)
    print(f"Results written to {json_path} and {png_path}")
    return results


if __name__ == "__main__":
    raise SystemExit(main())
