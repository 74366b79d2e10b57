"""The rank search: EVBMF-seeded Bayesian optimisation of per-layer methods and ranks."""

from worker.search._config import OBJECTIVES, PRUNERS, SAMPLERS, SearchConfig, search_config
from worker.search._context import SearchContext, prepare
from worker.search._finalize import (
    SearchResult,
    best_feasible,
    fallback_candidate,
    finalize,
    pareto_front,
    verification_candidates,
)
from worker.search._latency import measure_latency, measure_speedup, median_ratio, time_rounds
from worker.search._objective import make_objective
from worker.search._pruning import FeasibilityPruner
from worker.search._run import Progress, default_storage, run_search, run_trials
from worker.search._seeds import seed_trials
from worker.search._space import LayerSpace, build_space, plan_from_params
from worker.search._study import CONSTRAINT_ATTR, SEED_ATTR, finished_trials, open_study

__all__ = [
    "CONSTRAINT_ATTR",
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "SEED_ATTR",
    "FeasibilityPruner",
    "LayerSpace",
    "Progress",
    "SearchConfig",
    "SearchContext",
    "SearchResult",
    "best_feasible",
    "build_space",
    "default_storage",
    "fallback_candidate",
    "finalize",
    "finished_trials",
    "make_objective",
    "measure_latency",
    "measure_speedup",
    "median_ratio",
    "open_study",
    "pareto_front",
    "plan_from_params",
    "prepare",
    "run_search",
    "run_trials",
    "search_config",
    "seed_trials",
    "time_rounds",
    "verification_candidates",
]
