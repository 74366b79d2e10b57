"""The worker pool that runs the REST service's jobs (``rankopt worker``).

:class:`Worker` is one worker: it claims prepare and finalize phases under a lease, runs
search trials of SEARCHING jobs one at a time through each job's shared Optuna study, and
cleans up cancelled jobs. Any number of workers, in any number of processes and machines,
share one database. See :mod:`worker.pool._worker` for the loop, :mod:`worker.pool._budget` for
how the trial budget is kept, and :mod:`worker.pool._storage` for crash recovery.
"""

from worker.pool._budget import Counts, count, counts_against_budget, over_budget
from worker.pool._context import ContextCache, JobContext, PoolContext, worker_seed
from worker.pool._inputs import (
    BadInput,
    JobInputs,
    load_inputs,
    parse_spec,
    search_config_from_spec,
    upload_path,
)
from worker.pool._lease import LeaseKeeper, PhaseInterrupted
from worker.pool._publish import ARTIFACTS, publish_results
from worker.pool._reaper import Reaper, searching_job_ids
from worker.pool._storage import (
    WORKER_ATTR,
    StaleTrialCallback,
    delete_study_if_exists,
    optuna_storage,
)
from worker.pool._worker import OverBudget, TrialOutcome, Worker, default_worker_id
from worker.structured_logs import JsonFormatter, TextFormatter, configure_logging, log_event

__all__ = [
    "ARTIFACTS",
    "WORKER_ATTR",
    "BadInput",
    "ContextCache",
    "Counts",
    "JobContext",
    "JobInputs",
    "JsonFormatter",
    "LeaseKeeper",
    "OverBudget",
    "PhaseInterrupted",
    "PoolContext",
    "Reaper",
    "StaleTrialCallback",
    "TextFormatter",
    "TrialOutcome",
    "Worker",
    "configure_logging",
    "count",
    "counts_against_budget",
    "default_worker_id",
    "delete_study_if_exists",
    "load_inputs",
    "log_event",
    "optuna_storage",
    "over_budget",
    "parse_spec",
    "publish_results",
    "search_config_from_spec",
    "searching_job_ids",
    "upload_path",
    "worker_seed",
]
