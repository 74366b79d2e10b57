"""The worker pool that runs the REST service's jobs (``rankopt worker``).

:class:`Worker` is one worker: it claims prepare and finalize phases under a lease, runs
search trials of SEARCHING jobs one at a time through each job's shared Optuna study, and
cleans up cancelled jobs. Any number of workers, in any number of processes and machines,
share one database. See :mod:`worker.pool._worker` for the loop, :mod:`worker.pool._trial` for
one trial, :mod:`worker.pool._phases` for the leased phases and their failure path,
:mod:`worker.pool._budget` for how the trial budget is kept, and :mod:`worker.pool._storage`
for crash recovery.
"""

from worker.pool._budget import Counts, over_budget
from worker.pool._inputs import BadInput, search_config_from_spec
from worker.pool._reaper import Reaper
from worker.pool._storage import WORKER_ATTR
from worker.pool._worker import Worker

__all__ = [
    "WORKER_ATTR",
    "BadInput",
    "Counts",
    "Reaper",
    "Worker",
    "over_budget",
    "search_config_from_spec",
]
