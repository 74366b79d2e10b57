"""One trial: plan → compress → short cyclic-LR fine-tune → evaluate → compression ratio."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import optuna

from worker.search._config import drop_points
from worker.search._context import SearchContext
from worker.search._pruning import ACCURACY_ATTR
from worker.search._push import push_best
from worker.search._space import plan_from_params
from worker.search._study import (
    INTERRUPTED_ATTR,
    LATENCY_MET_ATTR,
    LATENCY_RATIO_ATTR,
    SEED_ATTR,
    SearchStopped,
    record_constraint,
)
from worker.training import EpochReport

logger = logging.getLogger(__name__)


def suggest_params(trial: optuna.Trial, ctx: SearchContext) -> dict[str, Any]:
    low, high = ctx.config.rank_scale
    params: dict[str, Any] = {}
    for space in ctx.spaces:
        params[space.method_param] = trial.suggest_categorical(space.method_param, space.methods)
        params[space.scale_param] = trial.suggest_float(space.scale_param, low, high, log=True)
    return params


def make_objective(
    ctx: SearchContext, *, should_stop: Callable[[], bool] = lambda: False
) -> Callable[[optuna.Trial], float | tuple[float, float]]:
    """The Optuna objective for ``ctx``; ``should_stop`` is polled between epochs."""
    config = ctx.config

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        started = time.perf_counter()
        params = suggest_params(trial, ctx)
        plan = plan_from_params(ctx.model, ctx.spaces, params, config)
        cost = ctx.plan_cost(plan)
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("params_count", cost.params)
        trial.set_user_attr("macs", cost.macs)

        def on_epoch(report: EpochReport) -> bool:
            if not config.pareto:
                trial.report(report.val_accuracy, report.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {report.epoch}")
            return not should_stop()

        model, result = ctx.fit(
            plan,
            mode=config.trial_finetune_mode,
            epochs=config.epochs_per_trial,
            seed=config.seed + trial.number,
            callback=on_epoch,
        )
        if result.status == "diverged":
            raise optuna.TrialPruned(f"fine-tuning diverged: {result.message}")
        if result.status == "stopped":
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            raise SearchStopped(trial.number)
        accuracy = result.final_val_accuracy
        drop = drop_points(ctx.trial_baseline_accuracy, accuracy)
        latency = ctx.latency(model) if ctx.times_latency else None
        ratio = ctx.compression(plan, latency)
        latency_ratio = ctx.latency_ratio(latency) if latency is not None else None
        latency_met = ctx.latency_met(latency)
        trial.set_user_attr(ACCURACY_ATTR, accuracy)
        trial.set_user_attr("accuracy_drop", drop)
        trial.set_user_attr("compression", ratio)
        trial.set_user_attr("latency_s", latency)
        trial.set_user_attr(LATENCY_RATIO_ATTR, latency_ratio)
        trial.set_user_attr(LATENCY_MET_ATTR, latency_met)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        limit = config.max_latency_ratio
        record_constraint(
            trial,
            drop - config.max_accuracy_drop,
            latency_ratio - limit if limit is not None and latency_ratio is not None else None,
        )
        if latency_met is not False:  # a plan over the latency limit is not worth pushing
            push_best(
                trial,
                params,
                ctx.spaces,
                config,
                compression=ratio,
                drop=drop,
                label_attr=SEED_ATTR,
            )
        logger.info(
            "trial %d: accuracy %.4f (drop %.2f pt), compression %.2fx%s",
            trial.number,
            accuracy,
            drop,
            ratio,
            "" if latency_ratio is None else f", latency x{latency_ratio:.3f} of the original's",
        )
        return (accuracy, ratio) if config.pareto else ratio

    return objective
