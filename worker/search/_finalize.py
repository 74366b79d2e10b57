"""Finalise: pick the best feasible plan, fine-tune it longer, write checkpoint and report."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from tensorops import Plan, measure_cost, save_compressed
from tensorops.methods import get_method
from worker.search._config import SearchConfig, drop_points
from worker.search._context import SearchContext
from worker.search._spend import SpendResult, spend_margin
from worker.search._study import LATENCY_MET_ATTR, LATENCY_RATIO_ATTR, SEED_ATTR
from worker.training import EvalResult, evaluate

logger = logging.getLogger(__name__)

REPORT_NAME = "report.json"
PARETO_NAME = "pareto.png"
CHECKPOINT_NAME = "model"


@dataclass(frozen=True)
class SearchResult:
    """Where the outputs went and the headline numbers."""

    out_dir: Path
    checkpoint: Path
    report: dict[str, Any]


def feasible(trial: FrozenTrial, max_drop: float) -> bool:
    """Completed, its drop within ``max_drop`` and not over the latency limit (if any)."""
    drop = trial.user_attrs.get("accuracy_drop")
    return (
        trial.state == TrialState.COMPLETE
        and drop is not None
        and drop <= max_drop
        and trial.user_attrs.get(LATENCY_MET_ATTR) is not False
    )


def best_feasible(study: optuna.Study, max_drop: float) -> FrozenTrial | None:
    """The completed trial with the highest compression whose accuracy drop is allowed (and
    that is not over the latency limit, when the search has one)."""
    candidates = [t for t in study.get_trials(deepcopy=False) if feasible(t, max_drop)]
    if not candidates:
        return None
    return max(candidates, key=lambda t: (t.user_attrs["compression"], -t.number))


def verification_candidates(study: optuna.Study, config: SearchConfig) -> list[FrozenTrial]:
    """The trials that finalising fine-tunes longer, in the order it tries them.

    The ``verify_top`` most compressed completed trials within ``max_accuracy_drop +
    verify_slack``, then the best trial within the tolerance itself if it is not among them.
    A trial whose compression is not above 1 (for the latency objective: a plan measured no
    faster than the original) is never a candidate: the original model is better.
    """
    near = _compressed_within(study, config.max_accuracy_drop + config.verify_slack)
    near.sort(key=lambda t: (-t.user_attrs["compression"], t.number))
    picked = near[: config.verify_top]
    best = max(
        _compressed_within(study, config.max_accuracy_drop),
        key=lambda t: (t.user_attrs["compression"], -t.number),
        default=None,
    )
    if best is not None and all(t.number != best.number for t in picked):
        picked.append(best)
    return picked


def _compressed_within(study: optuna.Study, max_drop: float) -> list[FrozenTrial]:
    """Completed trials whose drop is within ``max_drop`` and whose compression is above 1."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if feasible(t, max_drop) and t.user_attrs["compression"] > 1.0
    ]


def fallback_candidate(
    study: optuna.Study, config: SearchConfig, tried: set[int]
) -> FrozenTrial | None:
    """The trial finalising tries last when every candidate failed: of the compressed trials
    within the tolerance not tried yet, the most accurate (the more compressed on a tie).

    The candidates are the most compressed plans near the tolerance; when the final fine-tune
    shows them all beyond it (mostly at tight tolerances, where the trial-level accuracy is a
    single noisy reading), the plan with the largest margin is the one most likely to hold.
    None when there is no such trial.
    """
    safe = [t for t in _compressed_within(study, config.max_accuracy_drop) if t.number not in tried]
    return min(
        safe,
        key=lambda t: (t.user_attrs["accuracy_drop"], -t.user_attrs["compression"], t.number),
        default=None,
    )


def _verify_budget(config: SearchConfig, trial: FrozenTrial) -> tuple[int, int]:
    """Epochs and seed of a candidate's fine-tune: the final one, or with ``final_epochs ==
    0`` the trial's own again."""
    if config.final_epochs > 0:
        return config.final_epochs, config.seed
    return config.epochs_per_trial, config.seed + trial.number


def _choose(
    ctx: SearchContext, study: optuna.Study
) -> tuple[FrozenTrial | None, nn.Module, EvalResult, float | None, list[dict[str, Any]]]:
    """Fine-tune candidates longer until one meets the tolerance (and, with
    ``max_latency_ratio``, is within the latency limit, measured again after the fine-tune);
    else keep the original.

    The candidates are :func:`verification_candidates`, then :func:`fallback_candidate`.

    Returns the chosen trial (None: the original model), its fine-tuned model, that model's
    evaluation, its latency as measured for the constraint (None without one) and one record
    per candidate tried. With ``final_epochs == 0`` each candidate gets the trial's own
    fine-tune again (same epochs and seed).
    """
    config = ctx.config
    checks: list[dict[str, Any]] = []
    candidates = verification_candidates(study, config)
    last = fallback_candidate(study, config, {t.number for t in candidates})
    if last is not None:
        candidates.append(last)
    for trial in candidates:
        plan = Plan.from_dict(trial.user_attrs["plan"])
        model = ctx.compress(plan)
        epochs, seed = _verify_budget(config, trial)
        if len(plan.decomposed()) > 0:
            fit = ctx.finetune(model, epochs=epochs, seed=seed, final=True)
            # finetune's last evaluation is of the weights it leaves: no second pass needed.
            status = fit.status
            result = EvalResult(fit.final_val_accuracy, fit.final_val_loss, len(ctx.data.y_val))
        else:
            status, result = (
                "completed",
                evaluate(model, ctx.data, device=ctx.device, loader=ctx.loader),
            )
        drop = drop_points(ctx.baseline_accuracy, result.accuracy)
        met = status != "diverged" and drop <= config.max_accuracy_drop
        latency = ctx.latency(model) if met and config.max_latency_ratio is not None else None
        latency_met = ctx.latency_met(latency) if latency is not None else None
        met = met and latency_met is not False
        checks.append(
            {
                "trial": trial.number,
                "compression": trial.user_attrs["compression"],
                "trial_accuracy_drop": trial.user_attrs["accuracy_drop"],
                "final_accuracy": result.accuracy,
                "final_accuracy_drop": drop,
                "fine_tune": status,
                LATENCY_RATIO_ATTR: ctx.latency_ratio(latency) if latency is not None else None,
                LATENCY_MET_ATTR: latency_met,
                "met": met,
            }
        )
        logger.info(
            "verifying trial %d (%.2fx): drop %.2f pt after %d epoch(s)%s -> %s",
            trial.number,
            trial.user_attrs["compression"],
            drop,
            epochs,
            "" if latency is None else f", latency x{ctx.latency_ratio(latency):.3f}",
            "chosen" if met else "rejected",
        )
        if met:
            return trial, model, result, latency, checks
    if checks:
        logger.warning(
            "no candidate met the %.2f-point tolerance%s after the final fine-tune; "
            "keeping the original model",
            config.max_accuracy_drop,
            _latency_words(config),
        )
    model = ctx.compress(Plan())
    return (
        None,
        model,
        evaluate(model, ctx.data, device=ctx.device, loader=ctx.loader),
        None,
        checks,
    )


def _latency_words(config: SearchConfig) -> str:
    limit = config.max_latency_ratio
    return "" if limit is None else f" and the latency limit (x{limit:g} of the original's)"


def kept_original_reason(
    config: SearchConfig, checks: list[dict[str, Any]], trials: list[FrozenTrial]
) -> str:
    """Why finalising kept the original model, in words for the report."""
    if not checks:
        text = (
            f"no completed trial was compressed and within the {config.max_accuracy_drop:g}-point "
            f"tolerance{_latency_words(config)}"
        )
        slow = [
            t.user_attrs[LATENCY_RATIO_ATTR]
            for t in trials
            if t.user_attrs.get(LATENCY_MET_ATTR) is False
            and t.state == TrialState.COMPLETE
            and t.user_attrs["accuracy_drop"] <= config.max_accuracy_drop
        ]
        if slow:
            text += (
                f"; {len(slow)} trial(s) within the tolerance ran slower than the limit allows "
                f"(the fastest at x{min(slow):.3f} of the original's latency at batch "
                f"{config.latency_batch_size})"
            )
        return text
    over = sum(1 for c in checks if c[LATENCY_MET_ATTR] is False)
    text = (
        f"none of the {len(checks)} candidate(s) met the {config.max_accuracy_drop:g}-point "
        f"tolerance{_latency_words(config)} after the final fine-tune"
    )
    if over:
        text += f"; {over} met the tolerance but ran slower than the limit allows"
    return text


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return {
        "number": trial.number,
        "state": trial.state.name,
        "seed": attrs.get(SEED_ATTR),
        "params": trial.params,
        "plan": attrs.get("plan"),
        "accuracy": attrs.get("accuracy"),
        "accuracy_drop": attrs.get("accuracy_drop"),
        "compression": attrs.get("compression"),
        "params_count": attrs.get("params_count"),
        "macs": attrs.get("macs"),
        "latency_s": attrs.get("latency_s"),
        LATENCY_RATIO_ATTR: attrs.get(LATENCY_RATIO_ATTR),
        LATENCY_MET_ATTR: attrs.get(LATENCY_MET_ATTR),
        "duration_s": duration,
        "worker": attrs.get("worker"),  # set by the worker pool: which process ran it
    }


def pareto_front(records: list[dict[str, Any]]) -> list[int]:
    """Trial numbers not dominated in (accuracy, compression), both maximised."""
    points = [r for r in records if r["state"] == "COMPLETE" and r["accuracy"] is not None]
    front = []
    for r in points:
        dominated = any(
            o["accuracy"] >= r["accuracy"]
            and o["compression"] >= r["compression"]
            and (o["accuracy"] > r["accuracy"] or o["compression"] > r["compression"])
            for o in points
        )
        if not dominated:
            front.append(r["number"])
    return sorted(front)


def finalize(
    ctx: SearchContext,
    study: optuna.Study,
    out_dir: Path,
    *,
    arch: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> SearchResult:
    """Fine-tune the best candidates longer, keep the most compressed one that meets the
    tolerance, and write ``model/``, report and Pareto plot.

    With no candidate meeting it (and the latency limit, if any), the original model is kept
    (an empty plan) and the report says so (``found_feasible`` false, ``kept_original_reason``
    in words, ``verification`` lists what was tried).
    """
    config = ctx.config
    out_dir.mkdir(parents=True, exist_ok=True)
    best, model, result, latency_after, checks = _choose(ctx, study)
    plan = Plan.from_dict(best.user_attrs["plan"]) if best is not None else Plan()
    spent = SpendResult(skipped="no plan met the tolerance")
    if best is not None and len(plan.decomposed()) > 0:
        epochs, seed = _verify_budget(config, best)
        drop = drop_points(ctx.baseline_accuracy, result.accuracy)
        spent = spend_margin(ctx, best, plan, drop, epochs=epochs, seed=seed)
        if spent.plan is not None and spent.model is not None and spent.result is not None:
            plan, model, result = spent.plan, spent.model, spent.result
            latency_after = spent.latency
    model = model.to("cpu").eval()
    latency_before = ctx.baseline_latency or ctx.latency(ctx.model)
    if len(plan.decomposed()) == 0:
        latency_after = latency_before  # the original itself: the same network
    elif latency_after is None:  # the constraint's own measurement is the one reported
        latency_after = ctx.latency(model)
    model = model.to("cpu")
    latency_ratio = latency_after / max(latency_before, 1e-12)
    limit = config.max_latency_ratio
    latency_met = None if limit is None else latency_ratio <= limit
    cost = measure_cost(model, ctx.example)
    drop = drop_points(ctx.baseline_accuracy, result.accuracy)
    test = held_out(ctx, model)
    records = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    layer_plan: list[dict[str, Any]] = []
    for info in ctx.layers:
        choice = plan.get(info.name)
        # Per-layer cost before/after (closed form of the method, equal to the built layer's).
        before = {"params_before": info.params, "macs_before": info.macs}
        if choice is not None and not choice.keeps:
            after = get_method(choice.method).cost(info, choice.ranks)
            layer_plan.append(
                {
                    "layer": info.name,
                    "method": choice.method,
                    "ranks": list(choice.ranks),
                    **before,
                    "params_after": after.params,
                    "macs_after": after.macs,
                }
            )
        else:
            reason = info.reason if not info.compressible else "kept dense by the search"
            layer_plan.append(
                {
                    "layer": info.name,
                    "method": "keep",
                    "ranks": [],
                    "reason": reason,
                    **before,
                    "params_after": info.params,
                    "macs_after": info.macs,
                }
            )
    report: dict[str, Any] = {
        "baseline": {
            "accuracy": ctx.baseline_accuracy,
            "val_accuracy": ctx.baseline_accuracy,
            "test_accuracy": test["baseline_accuracy"] if test is not None else None,
            "params": ctx.baseline_cost.params,
            "macs": ctx.baseline_cost.macs,
            "latency_s": latency_before,
        },
        "final": {
            "accuracy": result.accuracy,
            "accuracy_drop": drop,
            "val_accuracy": result.accuracy,
            "val_accuracy_drop": drop,
            "test_accuracy": test["final_accuracy"] if test is not None else None,
            "test_accuracy_drop": test["accuracy_drop"] if test is not None else None,
            "test_constraint_met": test["constraint_met"] if test is not None else None,
            "params": cost.params,
            "macs": cost.macs,
            "latency_s": latency_after,
            "latency_ratio": latency_ratio,
            "max_latency_ratio": limit,
            "accuracy_constraint_met": drop <= config.max_accuracy_drop,
            "latency_constraint_met": latency_met,
            "constraint_met": drop <= config.max_accuracy_drop and latency_met is not False,
        },
        "ratios": {
            "params": ctx.baseline_cost.params / max(cost.params, 1),
            "macs": ctx.baseline_cost.macs / max(cost.macs, 1),
            "latency": latency_before / max(latency_after, 1e-12),
        },
        "chosen_trial": best.number if best is not None else None,
        "chosen_by_spending": spent.plan is not None,
        "found_feasible": best is not None,
        "kept_original_reason": (
            kept_original_reason(config, checks, study.get_trials(deepcopy=False))
            if best is None
            else None
        ),
        "verification": checks,
        "spend": spent.to_dict(margin_left=config.max_accuracy_drop - drop),
        "plan": plan.to_dict(),
        "layers": layer_plan,
        "search": config.to_dict(),
        "lr_calibration": (
            ctx.lr_calibration.to_dict()
            if ctx.lr_calibration is not None
            else {"scale": ctx.lr_scale, "accuracies": [], "seconds": 0.0}
        ),
        "test": test,
        "test_note": ctx.data.test_note,
        "data": {"name": ctx.data.name, "train": len(ctx.data.y_train), "val": len(ctx.data.y_val)},
        "arch": arch,
        "pareto_front": pareto_front(records),
        "trials": records,
        **(extra or {}),
    }
    checkpoint = save_compressed(
        model,
        plan,
        out_dir / CHECKPOINT_NAME,
        meta={
            "arch": arch,
            "accuracy": result.accuracy,
            "baseline_accuracy": ctx.baseline_accuracy,
        },
    )
    _write_json(out_dir / REPORT_NAME, report)
    plot_pareto(
        records,
        report["pareto_front"],
        best.number if best else None,
        out_dir / PARETO_NAME,
        baseline=ctx.baseline_accuracy,
        max_drop=config.max_accuracy_drop,
    )
    return SearchResult(out_dir=out_dir, checkpoint=checkpoint, report=report)


def held_out(ctx: SearchContext, model: nn.Module) -> dict[str, Any] | None:
    """The original's and ``model``'s accuracy on the test split, and the drop: the only
    reading of the test split in a search, after the choice is made (None without one).

    The tolerance is judged on validation; ``constraint_met`` says whether the test drop is
    within it too.
    """
    if ctx.data.test is None:
        logger.info("no test split: %s", ctx.data.test_note)
        return None
    before = evaluate(ctx.model, ctx.data, split="test", device=ctx.device, loader=ctx.loader)
    ctx.model.to("cpu")
    after = evaluate(model, ctx.data, split="test", device=ctx.device, loader=ctx.loader)
    model.to("cpu")
    drop = drop_points(before.accuracy, after.accuracy)
    return {
        "baseline_accuracy": before.accuracy,
        "final_accuracy": after.accuracy,
        "accuracy_drop": drop,
        "constraint_met": drop <= ctx.config.max_accuracy_drop,
        "n": after.n,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
    os.replace(tmp, path)


def plot_pareto(
    records: list[dict[str, Any]],
    front: list[int],
    chosen: int | None,
    path: Path,
    *,
    baseline: float,
    max_drop: float,
) -> None:
    """Accuracy against compression for every completed trial, front joined, choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r["state"] == "COMPLETE" and r["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.scatter(
        [r["compression"] for r in done],
        [100 * r["accuracy"] for r in done],
        s=14,
        c="#999999",
        label="trials",
    )
    seeds = [r for r in done if r["seed"]]
    ax.scatter(
        [r["compression"] for r in seeds],
        [100 * r["accuracy"] for r in seeds],
        s=22,
        marker="s",
        facecolors="none",
        edgecolors="#1f77b4",
        label="EVBMF seeds",
    )
    pts = sorted((r for r in done if r["number"] in front), key=lambda r: r["compression"])
    ax.plot(
        [r["compression"] for r in pts],
        [100 * r["accuracy"] for r in pts],
        "-o",
        color="#ff7f0e",
        ms=4,
        label="Pareto front",
    )
    ax.axhline(100 * baseline - max_drop, color="#d62728", ls="--", lw=1, label="tolerance")
    for r in done:
        if r["number"] == chosen:
            ax.scatter(
                [r["compression"]],
                [100 * r["accuracy"]],
                s=120,
                marker="*",
                color="#2ca02c",
                zorder=5,
                label=f"chosen (trial {chosen})",
            )
    ax.set_xlabel("compression (x)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
