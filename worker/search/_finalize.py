"""Finalise: pick the best feasible plan, fine-tune it longer, write checkpoint and report.

The candidates and the choice are in :mod:`worker.search._candidates`, the report's model in
:mod:`service.report_model` (written by :mod:`worker.search._report`), the Pareto plot in
:mod:`worker.search._plot`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from torch import nn

from service.report_model import (
    Baseline,
    DataSummary,
    Final,
    HeldOut,
    LayerRow,
    Ratios,
    Report,
    TrialRecord,
)
from tensorops import LayerInfo, Plan, measure_cost, save_compressed
from tensorops.methods import get_method
from worker.search._candidates import choose, kept_original_reason, verify_budget
from worker.search._config import drop_points
from worker.search._context import SearchContext
from worker.search._plot import plot_pareto
from worker.search._report import write_json
from worker.search._spend import SpendResult, spend_margin
from worker.search._study import LATENCY_MET_ATTR, LATENCY_RATIO_ATTR, SEED_ATTR
from worker.training import evaluate

logger = logging.getLogger(__name__)

REPORT_NAME = "report.json"
PARETO_NAME = "pareto.png"
CHECKPOINT_NAME = "model"


@dataclass(frozen=True)
class SearchResult:
    """Where the outputs went and the headline numbers: :attr:`typed_report` is the report,
    :attr:`report` the JSON object written to ``report.json``."""

    out_dir: Path
    checkpoint: Path
    typed_report: Report = field(repr=False)

    @cached_property
    def report(self) -> dict[str, Any]:
        return self.typed_report.to_dict()


def trial_record(trial: FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        seed=attrs.get(SEED_ATTR),
        params=trial.params,
        plan=attrs.get("plan"),
        accuracy=attrs.get("accuracy"),
        accuracy_drop=attrs.get("accuracy_drop"),
        compression=attrs.get("compression"),
        params_count=attrs.get("params_count"),
        macs=attrs.get("macs"),
        latency_s=attrs.get("latency_s"),
        latency_ratio=attrs.get(LATENCY_RATIO_ATTR),
        latency_met=attrs.get(LATENCY_MET_ATTR),
        duration_s=duration,
        worker=attrs.get("worker"),
    )


def layer_row(info: LayerInfo, plan: Plan) -> LayerRow:
    """The layer's row of the report: method, ranks and cost before/after (closed form of the
    method, equal to the built layer's)."""
    choice = plan.get(info.name)
    if choice is not None and not choice.keeps:
        after = get_method(choice.method).cost(info, choice.ranks)
        return LayerRow(
            layer=info.name,
            method=choice.method,
            ranks=list(choice.ranks),
            params_before=info.params,
            macs_before=info.macs,
            params_after=after.params,
            macs_after=after.macs,
        )
    return LayerRow(
        layer=info.name,
        method="keep",
        ranks=[],
        params_before=info.params,
        macs_before=info.macs,
        params_after=info.params,
        macs_after=info.macs,
        reason=info.reason if not info.compressible else "kept dense by the search",
        kept=True,
    )


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
    best, model, result, latency_after, checks = choose(ctx, study)
    plan = Plan.from_dict(best.user_attrs["plan"]) if best is not None else Plan()
    spent = SpendResult(skipped="no plan met the tolerance")
    if best is not None and len(plan.decomposed()) > 0:
        epochs, seed = verify_budget(config, best)
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
    report = Report(
        baseline=Baseline(
            accuracy=ctx.baseline_accuracy,
            params=ctx.baseline_cost.params,
            macs=ctx.baseline_cost.macs,
            latency_s=latency_before,
            val_accuracy=ctx.baseline_accuracy,
            test_accuracy=test.baseline_accuracy if test is not None else None,
        ),
        final=Final(
            accuracy=result.accuracy,
            accuracy_drop=drop,
            params=cost.params,
            macs=cost.macs,
            latency_s=latency_after,
            latency_ratio=latency_ratio,
            max_latency_ratio=limit,
            accuracy_constraint_met=drop <= config.max_accuracy_drop,
            latency_constraint_met=latency_met,
            constraint_met=drop <= config.max_accuracy_drop and latency_met is not False,
            val_accuracy=result.accuracy,
            val_accuracy_drop=drop,
            test_accuracy=test.final_accuracy if test is not None else None,
            test_accuracy_drop=test.accuracy_drop if test is not None else None,
            test_constraint_met=test.constraint_met if test is not None else None,
        ),
        ratios=Ratios(
            params=ctx.baseline_cost.params / max(cost.params, 1),
            macs=ctx.baseline_cost.macs / max(cost.macs, 1),
            latency=latency_before / max(latency_after, 1e-12),
        ),
        chosen_trial=best.number if best is not None else None,
        chosen_by_spending=spent.plan is not None,
        kept_original_reason=(
            kept_original_reason(config, checks, study.get_trials(deepcopy=False))
            if best is None
            else None
        ),
        verification=checks,
        spend=spent.to_dict(margin_left=config.max_accuracy_drop - drop),
        plan=plan.to_dict(),
        layers=[layer_row(info, plan) for info in ctx.layers],
        search=config.to_dict(),
        lr_calibration=(
            ctx.lr_calibration.to_dict()
            if ctx.lr_calibration is not None
            else {"scale": ctx.lr_scale, "accuracies": [], "seconds": 0.0}
        ),
        data=DataSummary(
            name=ctx.data.name,
            train=len(ctx.data.train),
            val=len(ctx.data.val),
            split_seed=ctx.data.split_seed,
        ),
        arch=arch,
        trials=[trial_record(t) for t in study.get_trials(deepcopy=False)],
        test=test,
        test_note=ctx.data.test_note,
        extra=dict(extra or {}),
    )
    checkpoint = save_compressed(
        model,
        plan,
        out_dir / CHECKPOINT_NAME,
        meta={
            "arch": arch,
            "accuracy": result.accuracy,
            "baseline_accuracy": ctx.baseline_accuracy,
            "data": ctx.data.name,
            "seed": config.seed,
            "split_seed": ctx.data.split_seed,
        },
    )
    searched = SearchResult(out_dir=out_dir, checkpoint=checkpoint, typed_report=report)
    written = searched.report
    write_json(out_dir / REPORT_NAME, written)
    plot_pareto(
        written["trials"],
        written["pareto_front"],
        best.number if best else None,
        out_dir / PARETO_NAME,
        baseline=ctx.baseline_accuracy,
        max_drop=config.max_accuracy_drop,
    )
    return searched


def held_out(ctx: SearchContext, model: nn.Module) -> HeldOut | None:
    """The original's and ``model``'s accuracy on the test split, and the drop: the only
    reading of the test split in a search, once the choice is made (None without one).

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
    return HeldOut(
        baseline_accuracy=before.accuracy,
        final_accuracy=after.accuracy,
        accuracy_drop=drop,
        constraint_met=drop <= ctx.config.max_accuracy_drop,
        n=after.n,
    )
