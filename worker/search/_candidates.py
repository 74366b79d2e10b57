"""Candidate selection: which trials finalising fine-tunes longer, and the one it keeps.

:func:`verification_candidates` lists the most compressed plans near the tolerance,
:func:`fallback_candidate` the one tried last, and :func:`choose` fine-tunes them in that order
until one meets the tolerance (else the original model is kept).
"""

from __future__ import annotations

import logging

import optuna
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from service.report_model import Verification
from tensorops import Plan
from worker.search._config import SearchConfig, drop_points, verify_mode
from worker.search._context import SearchContext
from worker.search._study import LATENCY_MET_ATTR, LATENCY_RATIO_ATTR
from worker.training import EvalResult, evaluate

logger = logging.getLogger(__name__)


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


def verify_budget(config: SearchConfig, trial: FrozenTrial) -> tuple[int, int]:
    """Epochs and seed of a candidate's fine-tune: the final one, or with ``final_epochs ==
    0`` the trial's own again."""
    if config.final_epochs > 0:
        return config.final_epochs, config.seed
    return config.epochs_per_trial, config.seed + trial.number


def choose(
    ctx: SearchContext, study: optuna.Study
) -> tuple[FrozenTrial | None, nn.Module, EvalResult, float | None, list[Verification]]:
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
    checks: list[Verification] = []
    candidates = verification_candidates(study, config)
    last = fallback_candidate(study, config, {t.number for t in candidates})
    if last is not None:
        candidates.append(last)
    for trial in candidates:
        plan = Plan.from_dict(trial.user_attrs["plan"])
        epochs, seed = verify_budget(config, trial)
        if len(plan.decomposed()) > 0:
            model, fit = ctx.fit(
                plan, mode=verify_mode(config), epochs=epochs, seed=seed, final=True
            )
            # finetune's last evaluation is of the weights it leaves: no second pass needed.
            status = fit.status
            result = EvalResult(fit.final_val_accuracy, fit.final_val_loss, len(ctx.data.val))
        else:
            model = ctx.compress(plan)
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
            Verification(
                trial=trial.number,
                compression=trial.user_attrs["compression"],
                trial_accuracy_drop=trial.user_attrs["accuracy_drop"],
                final_accuracy=result.accuracy,
                final_accuracy_drop=drop,
                fine_tune=status,
                fine_tune_mode=verify_mode(config),
                latency_ratio=ctx.latency_ratio(latency) if latency is not None else None,
                latency_met=latency_met,
                met=met,
            )
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
    scored = evaluate(model, ctx.data, device=ctx.device, loader=ctx.loader)
    return None, model, scored, None, checks


def _latency_words(config: SearchConfig) -> str:
    limit = config.max_latency_ratio
    return "" if limit is None else f" and the latency limit (x{limit:g} of the original's)"


def kept_original_reason(
    config: SearchConfig, checks: list[Verification], trials: list[FrozenTrial]
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
    over = sum(1 for c in checks if c.latency_met is False)
    text = (
        f"none of the {len(checks)} candidate(s) met the {config.max_accuracy_drop:g}-point "
        f"tolerance{_latency_words(config)} after the final fine-tune"
    )
    if over:
        text += f"; {over} met the tolerance but ran slower than the limit allows"
    return text
