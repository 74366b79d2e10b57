"""Pushing the best plan further: after each new best trial, try it with smaller ranks.

The sampler explores the whole space (a method and a rank scale per layer), which a budget of
tens of trials covers thinly; the best plans found are often not compressed as far as they
could be. So whenever a trial becomes the most compressed one within reach of the tolerance
(``max_accuracy_drop + verify_slack``: a trial that close is a verification candidate, since a
short fine-tune underrates what the final one recovers), the same plan with
every decomposed layer's rank scale multiplied by ``SearchConfig.push_factor`` (clamped to the
lower bound of ``rank_scale``) is enqueued next, labelled ``push-<n>`` (``n`` = the trial it
pushes). A push that is itself feasible and the best is pushed again, so the search climbs the
best plan's own direction, which is not uniform across layers, as far as the tolerance allows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from tensorops import KEEP
from worker.search._candidates import best_feasible
from worker.search._config import SearchConfig
from worker.search._space import LayerSpace
from worker.search._study import finished_trials

logger = logging.getLogger(__name__)

PUSH_PREFIX = "push-"


def pushed_params(
    params: Mapping[str, Any], spaces: list[LayerSpace], config: SearchConfig
) -> dict[str, Any] | None:
    """``params`` with every decomposed layer's scale times ``push_factor`` (None: no layer's
    scale can shrink further)."""
    factor = config.push_factor
    if factor is None:
        return None
    low = config.rank_scale[0]
    out = dict(params)
    shrunk = False
    for space in spaces:
        if out.get(space.method_param, KEEP) == KEEP or space.scale_param not in out:
            continue
        scale = float(out[space.scale_param])
        new = max(low, scale * factor)
        if new < scale:
            shrunk = True
        out[space.scale_param] = new
    return out if shrunk else None


def _budget_taken(study: optuna.Study) -> int:
    """Trials that hold or will hold a place in the budget: finished (not interrupted),
    running and waiting."""
    live = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    return finished_trials(study) + len(live)


def _already_queued(study: optuna.Study, params: Mapping[str, Any]) -> bool:
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.WAITING:
            if trial.system_attrs.get("fixed_params") == dict(params):
                return True
        elif trial.params == dict(params):
            return True
    return False


def push_best(
    trial: optuna.Trial,
    params: Mapping[str, Any],
    spaces: list[LayerSpace],
    config: SearchConfig,
    *,
    compression: float,
    drop: float,
    label_attr: str,
) -> bool:
    """Enqueue the push of ``trial`` when it is the new most compressed trial within
    ``max_accuracy_drop + verify_slack``. True if enqueued.

    Called by the objective before the trial is marked complete; ``compression`` and ``drop``
    are its results.
    """
    reach = config.max_accuracy_drop + config.verify_slack
    if config.push_factor is None or config.pareto or drop > reach or compression <= 1.0:
        return False
    study = trial.study
    if _budget_taken(study) >= config.trials:
        return False  # no trial left to run it: it would wait in the study for ever
    best = best_feasible(study, reach)
    if best is not None and best.user_attrs["compression"] >= compression:
        return False
    pushed = pushed_params(params, spaces, config)
    if pushed is None or _already_queued(study, pushed):
        return False
    study.enqueue_trial(pushed, user_attrs={label_attr: f"{PUSH_PREFIX}{trial.number}"})
    logger.info(
        "trial %d is the best so far (%.2fx); enqueued it with ranks x%g",
        trial.number,
        compression,
        config.push_factor,
    )
    return True
