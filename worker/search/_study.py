"""Creating or resuming the Optuna study of a search: sampler, pruner, constraints, seeds."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from worker.search._calibrate import LR_CALIBRATION_ATTR, LrCalibration
from worker.search._config import SearchConfig
from worker.search._context import PREPARED_ATTR, SearchContext, prepared_summary
from worker.search._pruning import FeasibilityPruner
from worker.search._seeds import seed_budget, seed_trials

logger = logging.getLogger(__name__)

#: User attribute carrying ``[accuracy_drop - max_accuracy_drop]``, followed by
#: ``latency_ratio - max_latency_ratio`` when that constraint is set; all <= 0 means feasible.
CONSTRAINT_ATTR = "constraint"
#: User attribute: the trial's measured latency over the original's (None: not measured).
LATENCY_RATIO_ATTR = "latency_ratio"
#: User attribute: whether the trial is within ``max_latency_ratio`` (None: no constraint).
LATENCY_MET_ATTR = "latency_met"
SEED_ATTR = "seed"
#: Set on trials stopped by a user's request or a crash; they do not use up the budget.
INTERRUPTED_ATTR = "interrupted"


class SearchStopped(Exception):
    """Raised inside a trial when the caller asked the search to stop."""

    def __init__(self, trial_number: int) -> None:
        super().__init__(f"trial {trial_number} stopped on request")
        self.trial_number = trial_number


def constraints(trial: FrozenTrial) -> Sequence[float]:
    """Optuna constraints: accuracy drop minus the allowed drop, then (with the latency
    constraint) latency ratio minus the allowed ratio; infeasible until measured."""
    return list(trial.user_attrs.get(CONSTRAINT_ATTR, [float("inf")]))


#: Optuna 5 records constraints on the trial (``Trial.set_constraint``) and deprecates the
#: samplers' ``constraints_func``; older releases only have the latter.
NATIVE_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")


def record_constraint(trial: optuna.Trial, value: float, latency: float | None = None) -> None:
    """Store ``accuracy_drop - max_accuracy_drop`` and, with the latency constraint,
    ``latency_ratio - max_latency_ratio`` (``latency``) where this Optuna's samplers read them."""
    values = [value] if latency is None else [value, latency]
    trial.set_user_attr(CONSTRAINT_ATTR, values)
    if NATIVE_CONSTRAINTS:
        trial.set_constraint("accuracy_drop", value)
        if latency is not None:
            trial.set_constraint("latency_ratio", latency)


def make_sampler(config: SearchConfig) -> optuna.samplers.BaseSampler:
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    legacy = {} if NATIVE_CONSTRAINTS else {"constraints_func": constraints}
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=config.seed, **legacy)  # type: ignore[arg-type]
    return optuna.samplers.TPESampler(
        seed=config.seed,
        multivariate=True,
        n_startup_trials=5,
        **legacy,  # type: ignore[arg-type]
    )


def make_pruner(config: SearchConfig, baseline_accuracy: float = 1.0) -> optuna.pruners.BasePruner:
    """The configured pruner. ``feasibility`` (the default) needs the original model's
    accuracy: it stops a trial only when its drop cannot come back within the tolerance plus
    the verification slack (see :class:`FeasibilityPruner`)."""
    if config.pruner == "none" or config.pareto:
        return optuna.pruners.NopPruner()
    if config.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    return FeasibilityPruner(baseline_accuracy, config.max_accuracy_drop + config.verify_slack)


def open_study(
    ctx: SearchContext,
    *,
    storage: str | optuna.storages.BaseStorage,
    study_name: str,
    fail_running: bool = True,
) -> optuna.Study:
    """Create the study (calibrating the learning rate, enqueueing the EVBMF seeds) or resume it
    where it stopped (taking the recorded learning-rate multiplier).

    On resume, trials left RUNNING by an interrupted process are failed, and a seed trial among
    them is enqueued again so seeding still happens exactly once per plan. A process joining a
    study that other processes are running trials of passes ``fail_running=False``: their
    trials are alive, and dead ones are found by Optuna's heartbeat instead.
    """
    config = ctx.config
    directions: list[StudyDirection] = [StudyDirection.MAXIMIZE] * (2 if config.pareto else 1)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        sampler=make_sampler(config),
        pruner=make_pruner(config, ctx.trial_baseline_accuracy),
        directions=directions,
        load_if_exists=True,
    )
    existing = study.get_trials(deepcopy=False)
    recorded = study.user_attrs.get(LR_CALIBRATION_ATTR)
    if recorded is not None:
        ctx.lr_calibration = LrCalibration.from_dict(recorded)
    elif not existing:
        study.set_user_attr(LR_CALIBRATION_ATTR, ctx.calibrate_lr().to_dict())
    if PREPARED_ATTR not in study.user_attrs:
        study.set_user_attr(PREPARED_ATTR, prepared_summary(ctx))
    if recorded is not None or existing:
        logger.info("fine-tuning at x%g of the schedule's rates (from the study)", ctx.lr_scale)
    if not existing and config.seeding:
        seeds = seed_trials(
            ctx.model,
            ctx.spaces,
            ctx.layers,
            config,
            sensitivity=ctx.seed_sensitivity(),
            speedups=ctx.seed_speedups(),
        )
        for label, params in seeds[: seed_budget(config.trials)]:
            study.enqueue_trial(params, user_attrs={SEED_ATTR: label})
        logger.info("enqueued %d EVBMF seed trials", len(study.get_trials(deepcopy=False)))
    for trial in existing if fail_running else ():
        if trial.state == TrialState.RUNNING:
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            logger.warning("failed trial %d left running by an interrupted run", trial.number)
            requeue_seed(study, trial)
    return study


def recorded_preparation(
    storage: optuna.storages.BaseStorage, study_name: str
) -> dict[str, Any] | None:
    """The :func:`~worker.search._context.prepared_summary` kept on the study (None when the
    study or the attribute does not exist: a study of an older release)."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return None
    recorded = storage.get_study_user_attrs(study_id).get(PREPARED_ATTR)
    return dict(recorded) if isinstance(recorded, dict) else None


def requeue_seed(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue an interrupted seed trial's plan again (other trials are simply re-sampled)."""
    if SEED_ATTR in trial.user_attrs:
        # Interrupted before every suggest ran, ``params`` is partial; the enqueued plan itself
        # is kept in the ``fixed_params`` system attribute.
        params = {**trial.params, **trial.system_attrs.get("fixed_params", {})}
        study.enqueue_trial(params, user_attrs={SEED_ATTR: trial.user_attrs[SEED_ATTR]})


def finished_trials(study: optuna.Study) -> int:
    """Trials that count against the budget: completed, pruned or failed, not interrupted."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False, states=states)
    return sum(1 for t in trials if not t.user_attrs.get(INTERRUPTED_ATTR))
