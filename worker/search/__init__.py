"""The rank search: EVBMF-seeded Bayesian optimisation of per-layer methods and ranks.

:func:`prepare` builds the :class:`SearchContext` (baseline, inventory, search space),
:func:`open_study` and :func:`run_trials` run the study, and :func:`finalize` verifies the
candidates (:mod:`worker.search._candidates`), writes the checkpoint, the typed
:class:`Report` (defined in :mod:`service.report_model`, written by :mod:`worker.search._report`)
and the Pareto plot (:mod:`worker.search._plot`).
"""

from service.report_model import Report, pareto_front
from worker.search._candidates import best_feasible, fallback_candidate, verification_candidates
from worker.search._config import OBJECTIVES, PRUNERS, SAMPLERS, SearchConfig, search_config
from worker.search._context import PREPARED_ATTR, SearchContext, prepare, prepared_summary
from worker.search._finalize import SearchResult, finalize
from worker.search._latency import measure_latency, measure_speedup, median_ratio, time_rounds
from worker.search._objective import make_objective
from worker.search._pruning import FeasibilityPruner
from worker.search._run import Progress, default_storage, run_search, run_trials
from worker.search._seeds import seed_trials
from worker.search._space import LayerSpace, build_space, plan_from_params
from worker.search._study import (
    CONSTRAINT_ATTR,
    INTERRUPTED_ATTR,
    SEED_ATTR,
    SearchStopped,
    finished_trials,
    make_sampler,
    open_study,
    recorded_preparation,
    requeue_seed,
)

__all__ = [
    "CONSTRAINT_ATTR",
    "INTERRUPTED_ATTR",
    "OBJECTIVES",
    "PREPARED_ATTR",
    "PRUNERS",
    "SAMPLERS",
    "SEED_ATTR",
    "FeasibilityPruner",
    "LayerSpace",
    "Progress",
    "Report",
    "SearchConfig",
    "SearchContext",
    "SearchResult",
    "SearchStopped",
    "best_feasible",
    "build_space",
    "default_storage",
    "fallback_candidate",
    "finalize",
    "finished_trials",
    "make_objective",
    "make_sampler",
    "measure_latency",
    "measure_speedup",
    "median_ratio",
    "open_study",
    "pareto_front",
    "plan_from_params",
    "prepare",
    "prepared_summary",
    "recorded_preparation",
    "requeue_seed",
    "run_search",
    "run_trials",
    "search_config",
    "seed_trials",
    "time_rounds",
    "verification_candidates",
]
