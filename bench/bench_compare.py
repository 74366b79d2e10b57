"""Compression at fixed accuracy: rankopt against the baselines people use, and its ablations.

Usage::

    .venv/bin/python bench/bench_compare.py [--arch ARCH ...] [--seeds 0 1 2]
        [--tolerances 1.0 0.5] [--trials 20] [--variants NAME ...] [--quick]
    .venv/bin/python bench/bench_compare.py --report bench/results/compare_*.json

Default: ``rankopt:lenet5``, ``rankopt:lenet500_300`` and the VGG-style ``rankopt:minivgg`` on
``mnist5k``, seeds 0, 1 and 2, tolerances 1.0 and 0.5 points of top-1 accuracy.

For every architecture and seed the starting model is trained once (as in
``bench_search.py``); every method then starts from a copy of it, with the same data, seed and
fine-tuning budget (``final_epochs`` of the search's cyclic schedule, AdamW, distillation from
the original; searches also fine-tune every trial for ``epochs_per_trial``) and the same
learning-rate multiplier: the one rankopt's calibration picks for the model, which the
baselines use too (``--plain-baseline-lr``: the schedule's rates for the baselines).

Baselines (one set of fine-tunes per seed, read at every tolerance):

* ``one-shot-tucker2``: Kim et al. (2016), Tucker-2 at the EVBMF ranks on every spatial conv,
  SVD at the EVBMF rank on the other layers, the output layer dense;
* ``one-shot-cp``: Lebedev et al. (2015), CP at the EVBMF-derived rank on every spatial conv,
  the other layers as in ``one-shot-tucker2``;
* ``uniform-svd`` / ``uniform-tucker2``: every compressible layer but the output layer
  compressed by the same parameter ratio (SVD everywhere, or Tucker-2 on spatial convs and SVD
  elsewhere), for each ratio of a ladder (2x to 64x, climbed until two rungs in a row miss
  every tolerance); the result at a tolerance is the most compressed rung
  that meets it.

A baseline that meets no tolerance counts as 1.00x (the original model is all it yields).

Searches (one per tolerance): ``rankopt`` (TPE, EVBMF seeding, MTD, cyclic LR), and the
ablations ``tpe-unseeded``, ``gp`` (Gaussian-process sampler, seeded), ``random`` (no seeding),
``tucker-only`` (no MTD: keep / Tucker-2 / SVD), ``constant-lr``, and one for each of the
search's own devices: ``no-calibration`` (the schedule's rates, no LR calibration),
``median-pruner`` (Optuna's median pruner instead of the feasibility one) and ``no-push`` (the
best plan is not pushed to smaller ranks); ``macs-objective`` is rankopt maximising the MACs
ratio instead of the parameter ratio; ``with-prune`` adds structured pruning (``prune``) to
the methods. A search's result is what
finalising returns: the original model when no candidate met the tolerance.

The summary per architecture gives, for every method and tolerance, the params and MACs ratios
over the seeds (mean, min-max) and how many seeds met the tolerance; the published L1
norm-based sparsification anchors are printed beside LeNet-500-300 and LeNet-5. Search
efficiency: the best feasible compression after each trial (tolerance 1.0), averaged over the
seeds, for TPE seeded / unseeded, GP and random, and the trial at which each first reaches
random's final best. Writes ``<out>/compare_<arch>.json`` and ``compare_<arch>.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from _common import cpu_pressure, machine_info, markdown_table, print_machine, versions
from bench_search import (
    DATASET,
    BenchConfig,
    Variant,
    first_reach,
    make_config,
    run_variant,
    train_start_model,
)
from bench_search import variants as search_variants
from torch import nn

from tensorops import KEEP, Choice, LayerInfo, Plan, get_method
from worker.data import DataBundle, load_dataset
from worker.search import SearchConfig, prepare
from worker.search._config import drop_points
from worker.search._context import SearchContext
from worker.search._space import default_method, output_layer, plan_from_params

DEFAULT_ARCHS = ("rankopt:lenet5", "rankopt:lenet500_300", "rankopt:minivgg")
UNIFORM_LADDER = (2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)
#: The uniform ladder stops climbing after this many consecutive rungs miss every tolerance.
LADDER_MISSES = 2
SEARCHES = (
    "rankopt",
    "tpe-unseeded",
    "gp",
    "random",
    "tucker-only",
    "constant-lr",
    "no-calibration",
    "median-pruner",
    "no-push",
    "macs-objective",
    "with-prune",
)
BASELINES = ("one-shot-tucker2", "one-shot-cp", "uniform-svd", "uniform-tucker2")
EFFICIENCY = ("rankopt", "tpe-unseeded", "gp", "random")

#: Published L1 norm-based sparsification results on MNIST-class models: fraction of the
#: parameters removed and the accuracy cost.
ANCHORS: dict[str, tuple[float, str]] = {
    "rankopt:lenet500_300": (85.4, "+0.09 pt error (all layers)"),
    "rankopt:lenet5": (82.2, "no error increase (fully-connected layers only)"),
}


def search_variants_for(cfg: BenchConfig, seed: int, data: DataBundle, tol: float) -> list[Variant]:
    """The search runs at tolerance ``tol`` (bench_search's variants, renamed, plus GP)."""
    by_name = {v.name: v for v in search_variants(cfg, seed, data)}
    base = replace(by_name["rankopt"].config, max_accuracy_drop=tol)
    out = [
        Variant("rankopt", by_name["rankopt"].description, base),
        Variant("tpe-unseeded", "TPE without the EVBMF seed plans", replace(base, seeding=False)),
        Variant("gp", "Gaussian-process sampler, EVBMF seeding", replace(base, sampler="gp")),
        Variant(
            "random", "random sampler, no seeding", replace(base, sampler="random", seeding=False)
        ),
        Variant(
            "tucker-only",
            "no MTD: keep / Tucker-2 / SVD",
            replace(base, methods=("tucker2", "svd")),
        ),
    ]
    constant = by_name["constant-lr"]
    out.append(
        Variant(
            "constant-lr",
            constant.description,
            replace(base, schedule=constant.config.schedule),
        )
    )
    out += [
        Variant(
            "no-calibration",
            "the schedule's learning rates as given (no LR calibration)",
            replace(base, lr_scales=(1.0,)),
        ),
        Variant("median-pruner", "Optuna's median pruner", replace(base, pruner="median")),
        Variant("no-push", "no pushing of the best plan", replace(base, push_factor=None)),
        Variant(
            "macs-objective", "rankopt maximising the MACs ratio", replace(base, objective="macs")
        ),
        Variant(
            "with-prune",
            "rankopt with structured pruning among the methods",
            replace(base, methods=("tucker2", "cp", "svd", "prune")),
        ),
    ]
    return out


# --------------------------------------------------------------------------------------------
# Baseline plans


def one_shot_plan(ctx: SearchContext, conv_method: str) -> Plan:
    """EVBMF ranks everywhere; ``conv_method`` on spatial convs; the output layer dense."""
    output = output_layer(ctx.spaces, ctx.layers)
    params: dict[str, Any] = {}
    for space in ctx.spaces:
        if space.name == output:
            method = KEEP
        elif conv_method in space.methods:
            method = conv_method
        else:
            method = default_method(space)
        params[space.method_param] = method
        params[space.scale_param] = 1.0
    return plan_from_params(ctx.model, ctx.spaces, params, ctx.config)


def _svd_rank(info: LayerInfo, ratio: float, limit: int) -> int:
    kh, kw = info.kernel_size
    fan_in = info.in_channels * kh * kw
    rank = math.floor(info.out_channels * fan_in / (ratio * (fan_in + info.out_channels)))
    return max(1, min(rank, limit))


def _tucker_ranks(info: LayerInfo, ratio: float, limits: tuple[int, ...]) -> tuple[int, int]:
    """Channel ranks ``s * (out, in)`` whose Tucker-2 parameters are 1/ratio of the kernel's."""
    c_out, c_in = info.out_channels, info.in_channels
    k = info.kernel_size[0] * info.kernel_size[1]
    # s^2 * c_out * c_in * k + s * (c_in^2 + c_out^2) = c_out * c_in * k / ratio
    a, b, c = c_out * c_in * k, c_in**2 + c_out**2, -c_out * c_in * k / ratio
    s = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    r_out = max(1, min(round(s * c_out), limits[0]))
    r_in = max(1, min(round(s * c_in), limits[1]))
    return r_out, r_in


def uniform_plan(ctx: SearchContext, ratio: float, conv_method: str) -> Plan:
    """Every compressible layer but the output one at parameter ratio ``ratio``."""
    output = output_layer(ctx.spaces, ctx.layers)
    by_name = {info.name: info for info in ctx.layers}
    choices: dict[str, Choice] = {}
    for space in ctx.spaces:
        if space.name == output:
            continue
        info = by_name[space.name]
        module = ctx.model.get_submodule(space.name)
        if conv_method == "tucker2" and "tucker2" in space.methods:
            method = get_method("tucker2")
            ranks: tuple[int, ...] = _tucker_ranks(info, ratio, method.max_ranks(module))
        elif "svd" in space.methods:
            method = get_method("svd")
            ranks = (_svd_rank(info, ratio, method.max_ranks(module)[0]),)
        else:
            continue
        choices[space.name] = Choice(method.name, ranks)
    return Plan(choices)


def evaluate_plan(ctx: SearchContext, label: str, plan: Plan) -> dict[str, Any]:
    """Compress with ``plan``, fine-tune for the final budget, and measure."""
    started = time.perf_counter()
    model = ctx.compress(plan)
    fit = ctx.finetune(model, epochs=ctx.config.final_epochs, seed=ctx.config.seed)
    cost = ctx.plan_cost(plan)
    accuracy = float(fit.final_val_accuracy)
    return {
        "label": label,
        "plan": plan.to_dict(),
        "status": fit.status,
        "accuracy": accuracy,
        "accuracy_drop": drop_points(ctx.baseline_accuracy, accuracy),
        "params_ratio": ctx.baseline_cost.params / max(cost.params, 1),
        "macs_ratio": ctx.baseline_cost.macs / max(cost.macs, 1),
        "wall_s": time.perf_counter() - started,
    }


def run_baselines(
    model: nn.Module,
    data: DataBundle,
    config: SearchConfig,
    ladder: Sequence[float],
    *,
    tolerance: float,
    calibrate: bool = True,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any] | None]:
    """Every baseline's evaluated plans (a ladder of them for the uniform ones), and the
    learning-rate calibration they were fine-tuned with.

    With ``calibrate`` the baselines' fine-tunes use the multiplier rankopt's own calibration
    picks for this model (the same measurement, see :mod:`worker.search._calibrate`), so
    that no method gains from a better-suited learning rate; without it, the schedule's rates.
    """
    ctx = prepare(copy.deepcopy(model), data, config)
    calibration = ctx.calibrate_lr().to_dict() if calibrate else None
    if calibration is not None:
        print(f"    baselines fine-tune at x{ctx.lr_scale:g}", file=sys.stderr, flush=True)
    out: dict[str, list[dict[str, Any]]] = {
        "one-shot-tucker2": [evaluate_plan(ctx, "evbmf", one_shot_plan(ctx, "tucker2"))],
        "one-shot-cp": [evaluate_plan(ctx, "evbmf", one_shot_plan(ctx, "cp"))],
    }
    convs = any("tucker2" in space.methods for space in ctx.spaces)
    for name, method in (("uniform-svd", "svd"), ("uniform-tucker2", "tucker2")):
        if method == "tucker2" and not convs:
            continue  # no spatial conv: identical to uniform-svd
        rungs = []
        misses = 0
        for ratio in ladder:
            if misses >= LADDER_MISSES:
                break  # ``tolerance`` (the largest) missed twice running: higher rungs will too
            rung = evaluate_plan(ctx, f"{ratio:g}x", uniform_plan(ctx, ratio, method))
            rung["target_ratio"] = ratio
            rungs.append(rung)
            misses = misses + 1 if rung["accuracy_drop"] > tolerance else 0
            print(
                f"    {name} {ratio:g}x: {rung['params_ratio']:.2f}x, "
                f"drop {rung['accuracy_drop']:.2f} pt",
                file=sys.stderr,
                flush=True,
            )
        out[name] = rungs
    return out, calibration


def baseline_at(rungs: Sequence[dict[str, Any]], tol: float) -> dict[str, Any]:
    """The most compressed evaluated plan within ``tol`` points (1.00x when none is)."""
    ok = [r for r in rungs if r["accuracy_drop"] <= tol]
    if not ok:
        return {"params_ratio": 1.0, "macs_ratio": 1.0, "met": False, "label": "-", "drop": 0.0}
    best = max(ok, key=lambda r: r["params_ratio"])
    return {
        "params_ratio": best["params_ratio"],
        "macs_ratio": best["macs_ratio"],
        "met": True,
        "label": best["label"],
        "drop": best["accuracy_drop"],
    }


def search_at(run: dict[str, Any]) -> dict[str, Any]:
    met = bool(run["constraint_met"])
    return {
        "params_ratio": run["params_ratio"] if met else 1.0,
        "macs_ratio": run["macs_ratio"] if met else 1.0,
        "met": met and run["found_feasible"],
        "label": run["chosen_seed"]
        or (f"#{run['chosen_trial']}" if run["found_feasible"] else "-"),
        "drop": run["final_accuracy_drop"],
    }


# --------------------------------------------------------------------------------------------
# Reporting


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}x"
    return f"{mean:.2f}x ({min(values):.2f}-{max(values):.2f})"


def summary_rows(results: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    tolerances = results["tolerances"]
    methods = [m for m in (*SEARCHES, *BASELINES) if m in results["methods"]]
    for method in methods:
        row: list[object] = [method]
        for tol in tolerances:
            cells = [
                info["at"][f"{tol:g}"][method]
                for info in results["seeds"].values()
                if method in info["at"][f"{tol:g}"]
            ]
            if not cells:  # not run at this tolerance
                row += ["-", "-", "-"]
                continue
            row.append(_spread([c["params_ratio"] for c in cells]))
            row.append(_spread([c["macs_ratio"] for c in cells]))
            row.append(f"{sum(1 for c in cells if c['met'])}/{len(cells)}")
        if any(cell != "-" for cell in row[1:]):
            rows.append(row)
    return rows


def print_summary(results: dict[str, Any]) -> None:
    arch = results["arch"]
    print(f"\n### {arch}: compression at fixed accuracy (mean over seeds, min-max)\n")
    headers = ["method"]
    for tol in results["tolerances"]:
        headers += [f"params ≤ {tol:g} pt", f"MACs ≤ {tol:g} pt", f"met ≤ {tol:g}"]
    print(markdown_table(headers, summary_rows(results)))
    baselines = ", ".join(
        f"seed {s}: {100 * i['baseline_accuracy']:.2f}%" for s, i in results["seeds"].items()
    )
    print(f"\nBaseline accuracy {baselines}. 'met' counts seeds whose result met the tolerance;")
    print("a method that met none yields the original model (1.00x), counted as such.")
    scales = []
    for seed, info in results["seeds"].items():
        chosen = info.get("runs", {}).get(f"{results['tolerances'][0]:g}", {}).get("rankopt") or {}
        calibration = chosen.get("lr_calibration") or info.get("baseline_lr_calibration")
        if calibration:
            tried = ", ".join(f"x{s:g} {100 * a:.1f}%" for s, a in calibration["accuracies"])
            scales.append(f"seed {seed}: x{calibration['scale']:g} ({tried})")
    if scales:
        print(
            "\nLearning-rate multiplier picked by the calibration (EVBMF plan's accuracy after "
            f"a trial fine-tune at each): {'; '.join(scales)}."
        )
    anchor = ANCHORS.get(arch)
    if anchor is not None and "rankopt" in results["methods"]:
        removed, note = anchor
        rows = [["L1 norm-based sparsification (published)", f"{removed:.1f}%", note]]
        for tol in results["tolerances"]:
            cells = [i["at"][f"{tol:g}"]["rankopt"] for i in results["seeds"].values()]
            pct = [100.0 * (1.0 - 1.0 / c["params_ratio"]) for c in cells]
            rows.append(
                [
                    f"rankopt at ≤ {tol:g} pt (mean, min-max over seeds)",
                    f"{statistics.fmean(pct):.1f}% ({min(pct):.1f}-{max(pct):.1f})",
                    f"{sum(1 for c in cells if c['met'])}/{len(cells)} seeds met",
                ]
            )
        print("\nParameters removed, against the published anchor:\n")
        print(markdown_table(["", "params removed", "accuracy"], rows))


def mean_curve(curves: Sequence[Sequence[float | None]], length: int) -> list[float]:
    out = []
    for i in range(length):
        values = [(c[i] if i < len(c) and c[i] is not None else 1.0) for c in curves]
        out.append(statistics.fmean(values) if values else 1.0)
    return out


def efficiency(results: dict[str, Any]) -> dict[str, Any]:
    """Per seed, the trial at which each sampler first reaches random's final best (tol 1)."""
    tol = f"{results['tolerances'][0]:g}"
    table: dict[str, Any] = {"tolerance": tol, "seeds": {}, "mean_curves": {}}
    curves: dict[str, list[list[float | None]]] = {name: [] for name in EFFICIENCY}
    for seed, info in results["seeds"].items():
        runs = info["runs"][tol]
        if "random" not in runs:
            continue
        target = runs["random"]["curve"][-1] if runs["random"]["curve"] else None
        table["seeds"][seed] = {
            "random_best": target,
            **{
                name: first_reach(runs[name]["curve"], target)
                for name in EFFICIENCY
                if name in runs
            },
        }
        for name in EFFICIENCY:
            if name in runs:
                curves[name].append(runs[name]["curve"])
    length = max((len(c) for cs in curves.values() for c in cs), default=0)
    table["mean_curves"] = {n: mean_curve(cs, length) for n, cs in curves.items() if cs}
    return table


def print_efficiency(results: dict[str, Any]) -> None:
    eff = results.get("efficiency")
    if not eff or not eff["seeds"]:
        return
    print(
        f"\n### {results['arch']}: search efficiency (tolerance {eff['tolerance']} pt): "
        "trial at which each first reaches random search's final best\n"
    )
    names = [n for n in EFFICIENCY if n in eff["mean_curves"]]
    rows: list[list[object]] = []
    for seed, row in eff["seeds"].items():
        best = row["random_best"]
        rows.append(
            [seed, "none feasible" if best is None else f"{best:.2f}x"]
            + [("never" if row.get(n) is None else row[n]) for n in names]
        )
    print(markdown_table(["seed", "random's final best", *names], rows))
    print("\nMean best feasible compression after trial n (1.00x until a feasible trial):\n")
    length = len(next(iter(eff["mean_curves"].values())))
    marks = sorted({1, 2, 3, 5, 10, 15, length} & set(range(1, length + 1)))
    print(
        markdown_table(
            ["trial", *names],
            [[n, *[f"{eff['mean_curves'][m][n - 1]:.2f}x" for m in names]] for n in marks],
        )
    )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eff = results.get("efficiency") or {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in eff.get("mean_curves", {}).items():
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=name)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"mean best feasible params ratio (drop ≤ {eff.get('tolerance', '?')} pt)")
    ax.set_title(f"{results['arch']}: search efficiency over {len(eff.get('seeds', {}))} seed(s)")
    ax.grid(alpha=0.3)
    if eff.get("mean_curves"):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Driver


def bench_arch(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = make_config(argparse.Namespace(**{**vars(args), "constant_lr": None}), arch)
    tolerances = [float(t) for t in args.tolerances]
    wanted = set(args.variants) if args.variants else set(SEARCHES) | set(BASELINES)
    data = load_dataset(DATASET, split_seed=0, max_train=cfg.max_train)
    kwargs: dict[str, Any] = {"num_classes": data.num_classes}
    if arch.startswith("rankopt:"):
        kwargs["in_channels"] = data.input_shape[0]
    arch_info = {"arch": arch, "kwargs": kwargs}
    ladder = UNIFORM_LADDER[:3] if cfg.quick else UNIFORM_LADDER
    results: dict[str, Any] = {
        "arch": arch,
        "config": asdict(cfg),
        "tolerances": tolerances,
        "ladder": list(ladder),
        "methods": sorted(wanted),
        "data": {"name": data.name, "train": len(data.y_train), "val": len(data.y_val)},
        "seeds": {},
    }
    started = time.perf_counter()
    for seed in cfg.seeds:
        model, info = train_start_model(cfg, data, kwargs, seed)
        info["runs"] = {f"{t:g}": {} for t in tolerances}
        info["at"] = {f"{t:g}": {} for t in tolerances}
        results["seeds"][seed] = info
        print(
            f"[{arch} seed {seed}] baseline {100 * info['baseline_accuracy']:.2f}%",
            file=sys.stderr,
            flush=True,
        )
        base_config = search_variants_for(cfg, seed, data, tolerances[0])[0].config
        if wanted & set(BASELINES):
            baselines, calibration = run_baselines(
                model,
                data,
                base_config,
                ladder,
                tolerance=max(tolerances),
                calibrate=not args.plain_baseline_lr,
            )
            info["baselines"] = baselines
            info["baseline_lr_calibration"] = calibration
            for name, rungs in baselines.items():
                if name in wanted:
                    for tol in tolerances:
                        info["at"][f"{tol:g}"][name] = baseline_at(rungs, tol)
            save(results, args)
        for tol in tolerances:
            for variant in search_variants_for(cfg, seed, data, tol):
                if variant.name not in wanted:
                    continue
                print(f"[{arch} seed {seed} ≤{tol:g}] {variant.name} ...", file=sys.stderr)
                run = run_variant(variant, model, data, arch_info, max_drop=tol)
                info["runs"][f"{tol:g}"][variant.name] = run
                info["at"][f"{tol:g}"][variant.name] = search_at(run)
                save(results, args)
                print(
                    f"    {run['params_ratio']:.2f}x params, drop "
                    f"{run['final_accuracy_drop']:.2f} pt, {run['wall_s']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
        save(results, args)  # a partial file survives an interrupted run
    results["efficiency"] = efficiency(results)
    results["total_seconds"] = time.perf_counter() - started
    results["cpu_pressure_after"] = cpu_pressure()
    return results


def stem(results: dict[str, Any], quick: bool) -> str:
    name = results["arch"].split(":")[-1]
    return f"compare_{name}{'_quick' if quick else ''}"


def save(results: dict[str, Any], args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem(results, args.quick)}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path


def report(results: dict[str, Any]) -> None:
    cfg = results["config"]
    print(
        f"\n{results['arch']} on {results['data']['name']} ({results['data']['train']} train / "
        f"{results['data']['val']} val), seeds {', '.join(map(str, results['seeds']))}: "
        f"{cfg['trials']} trials per search, {cfg['epochs_per_trial']} epochs per trial, "
        f"{cfg['final_epochs']} final epochs; uniform ladder "
        + ", ".join(f"{r:g}x" for r in results["ladder"])
        + f"; {results.get('total_seconds', 0) / 60:.0f} min."
    )
    print_summary(results)
    if "efficiency" not in results:  # a partial file written after an interrupted seed
        results["efficiency"] = efficiency(results)
    print_efficiency(results)


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of the same architecture and seeds made by separate commands
    (e.g. the 0.5-point searches run after the 1-point ones); baselines are read again at
    every tolerance from their evaluated plans."""
    if len({part["arch"] for part in parts}) != 1:
        raise SystemExit("--merge: the files hold different architectures")
    out = json.loads(json.dumps(parts[0]))
    for part in parts[1:]:
        out["tolerances"] += [t for t in part["tolerances"] if t not in out["tolerances"]]
        out["methods"] = sorted(set(out["methods"]) | set(part["methods"]))
        out["total_seconds"] = out.get("total_seconds", 0) + part.get("total_seconds", 0)
        for seed, info in part["seeds"].items():
            mine = out["seeds"].setdefault(seed, info)
            if mine is info:
                continue
            if abs(mine["baseline_accuracy"] - info["baseline_accuracy"]) > 1e-12:
                raise SystemExit(f"--merge: seed {seed} starts from different models")
            for key in ("runs", "at"):
                for tol, runs in info[key].items():
                    mine[key].setdefault(tol, {}).update(runs)
            if "baselines" in info and "baselines" not in mine:
                mine["baselines"] = info["baselines"]
                mine["baseline_lr_calibration"] = info.get("baseline_lr_calibration")
    for info in out["seeds"].values():
        for name, rungs in info.get("baselines", {}).items():
            for tol in out["tolerances"]:
                info["at"].setdefault(f"{tol:g}", {})[name] = baseline_at(rungs, tol)
    out.pop("efficiency", None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=list(DEFAULT_ARCHS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--trials", type=int, default=None, help="per search (default 20)")
    parser.add_argument(
        "--variants", nargs="+", default=None, choices=[*SEARCHES, *BASELINES], help="subset"
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget, a smoke test")
    parser.add_argument(
        "--plain-baseline-lr",
        action="store_true",
        help="fine-tune the baselines at the schedule's rates instead of the calibrated ones",
    )
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--report", nargs="+", default=None, help="reprint saved JSON files")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="combine saved JSON files of one architecture (written to --out) and report",
    )
    args = parser.parse_args(argv)
    if args.merge:
        merged = merge([json.loads(Path(name).read_text()) for name in args.merge])
        merged["efficiency"] = efficiency(merged)
        path = save(merged, args)
        plot(merged, path.with_suffix(".png"))
        report(merged)
        print(f"\nMerged results written to {path}")
        return 0
    if args.report:
        for name in args.report:
            report(json.loads(Path(name).read_text()))
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    print("## Compression at fixed accuracy")
    print_machine(machine_info(), versions())
    for arch in args.arch:
        results = bench_arch(arch, args)
        path = save(results, args)
        png = path.with_suffix(".png")
        plot(results, png)
        report(results)
        print(f"\nResults written to {path} and {png}")
        sys.stdout.flush()
    if args.quick:
        print("\n--quick: tiny budget; a smoke test, not evidence.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
