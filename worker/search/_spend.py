"""Spend the tolerance that the chosen plan leaves: bisect a rank-scale factor on its plan.

Verification stops at the first candidate that meets the tolerance after the final
fine-tune, whatever margin it leaves; with a margin of half a point, a more compressed plan in
the same direction would usually have met it too. So when the chosen plan's drop leaves at
least ``MIN_MARGIN_SHARE`` of the tolerance unused, every rank scale of its trial is multiplied
by a factor ``f`` and the result is fine-tuned exactly as the candidates were (the final
fine-tune is the judge, on the validation split); ``f`` is bisected in log space between
``LOW_FACTOR`` and 1 for ``config.spend_steps`` steps: a plan that meets the tolerance becomes
the chosen one and the next step tries a smaller factor, a miss tries a larger one. Layers kept
dense stay dense. With ``max_latency_ratio`` a step that meets the tolerance has its latency
measured too, and one over the limit is never chosen (the bisection still follows accuracy).
The latency objective and Pareto searches are left alone (a smaller rank is not always
faster, and a Pareto front has no single tolerance to spend).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial
from torch import nn

from tensorops import Plan
from worker.search._config import drop_points, verify_mode
from worker.search._context import SearchContext
from worker.search._space import plan_from_params
from worker.training import EvalResult

__all__ = ["LOW_FACTOR", "MIN_MARGIN_SHARE", "SpendResult", "spend_margin"]

logger = logging.getLogger(__name__)

#: Spend only when at least this share of the tolerance is left unused.
MIN_MARGIN_SHARE = 0.2
#: The smallest rank-scale factor the bisection considers.
LOW_FACTOR = 0.25


@dataclass
class SpendResult:
    """What spending the margin did: the steps tried, and the better plan if one met."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    plan: Plan | None = None
    model: nn.Module | None = None
    result: EvalResult | None = None
    latency: float | None = None  # of ``model``, measured for the latency constraint
    skipped: str | None = None

    def to_dict(self, margin_left: float) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "improved": self.plan is not None,
            "skipped": self.skipped,
            "margin_left": margin_left,
        }


def _scaled(trial: FrozenTrial, factor: float) -> dict[str, Any]:
    return {
        k: (float(v) * factor if k.endswith(".rank_scale") else v) for k, v in trial.params.items()
    }


def spend_margin(
    ctx: SearchContext,
    trial: FrozenTrial,
    plan: Plan,
    drop: float,
    *,
    epochs: int,
    seed: int,
) -> SpendResult:
    """Bisect a factor on ``trial``'s rank scales to use the margin ``plan`` leaves (module
    doc). ``drop`` is the chosen plan's verified drop; ``epochs`` and ``seed`` are the fine-tune
    the candidates had."""
    config = ctx.config
    tolerance = config.max_accuracy_drop
    out = SpendResult()
    if config.spend_steps == 0:
        out.skipped = "spend_steps is 0"
    elif config.objective == "latency" or config.pareto:
        out.skipped = "not for the latency objective or a Pareto search"
    elif tolerance - drop < MIN_MARGIN_SHARE * tolerance:
        out.skipped = f"margin {tolerance - drop:.2f} pt is under {MIN_MARGIN_SHARE:.0%} of it"
    if out.skipped is not None:
        return out
    low, high = LOW_FACTOR, 1.0
    best_compression = ctx.compression(plan)
    tried: list[Plan] = [plan]
    for _ in range(config.spend_steps):
        factor = round(math.sqrt(low * high), 4)
        candidate = plan_from_params(ctx.model, ctx.spaces, _scaled(trial, factor), config)
        if candidate in tried:  # ranks too small to change at this factor
            low = factor
            continue
        tried.append(candidate)
        compression = ctx.compression(candidate)
        model, fit = ctx.fit(
            candidate, mode=verify_mode(config), epochs=epochs, seed=seed, final=True
        )
        result = EvalResult(fit.final_val_accuracy, fit.final_val_loss, len(ctx.data.val))
        step_drop = drop_points(ctx.baseline_accuracy, result.accuracy)
        met = fit.status != "diverged" and step_drop <= tolerance
        latency = ctx.latency(model) if met and config.max_latency_ratio is not None else None
        latency_met = ctx.latency_met(latency) if latency is not None else None
        keep = met and latency_met is not False and compression > best_compression
        out.steps.append(
            {
                "factor": factor,
                "compression": compression,
                "final_accuracy": result.accuracy,
                "final_accuracy_drop": step_drop,
                "fine_tune": fit.status,
                "latency_ratio": ctx.latency_ratio(latency) if latency is not None else None,
                "latency_met": latency_met,
                "met": met and latency_met is not False,
            }
        )
        logger.info(
            "spending the margin: rank scales x%g (%.2fx): drop %.2f pt -> %s",
            factor,
            compression,
            step_drop,
            "kept" if keep else "rejected",
        )
        if met:
            high = factor
            if keep:
                best_compression = compression
                out.plan, out.model, out.result = candidate, model, result
                out.latency = latency
        else:
            low = factor
    return out
