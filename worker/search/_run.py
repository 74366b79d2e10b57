"""A whole search in one process: prepare, run trials against a resumable study, finalise."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from torch import nn

from worker.data import DataBundle, DataSplits
from worker.search._candidates import best_feasible
from worker.search._config import SearchConfig
from worker.search._context import SearchContext, prepare
from worker.search._finalize import SearchResult, finalize
from worker.search._objective import make_objective
from worker.search._study import SearchStopped, finished_trials, open_study, requeue_seed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """What a progress display needs after each trial."""

    done: int
    total: int
    best_compression: float | None
    best_accuracy: float | None
    elapsed_s: float

    @property
    def eta_s(self) -> float | None:
        if self.done == 0 or self.done >= self.total:
            return None
        return self.elapsed_s / self.done * (self.total - self.done)


def default_storage(out_dir: Path) -> str:
    """A SQLite file beside the outputs, so an interrupted run resumes with the same command."""
    return f"sqlite:///{(out_dir / 'study.db').resolve()}"


def run_trials(
    ctx: SearchContext,
    study: optuna.Study,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Run trials one at a time until the budget (count and/or wall time) is spent."""
    config = ctx.config
    objective = make_objective(ctx, should_stop=should_stop)
    started = time.perf_counter()
    done_at_start = finished_trials(study)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    while finished_trials(study) < config.trials and not should_stop():
        if config.timeout_s is not None and time.perf_counter() - started >= config.timeout_s:
            logger.info("wall-time budget of %.0fs spent", config.timeout_s)
            break
        try:
            study.optimize(objective, n_trials=1, catch=(RuntimeError, ValueError))
        except SearchStopped as stopped:
            (trial,) = (t for t in study.get_trials() if t.number == stopped.trial_number)
            requeue_seed(study, trial)
            logger.info("search stopped on request; the interrupted trial will be rerun")
            return
        if on_progress is not None:
            best = best_feasible(study, config.max_accuracy_drop)
            done = finished_trials(study)
            on_progress(
                Progress(
                    done=done,
                    total=config.trials,
                    best_compression=best.user_attrs["compression"] if best else None,
                    best_accuracy=best.user_attrs["accuracy"] if best else None,
                    elapsed_s=(time.perf_counter() - started) * done / max(done - done_at_start, 1),
                )
            )


def run_search(
    model: nn.Module,
    data: DataSplits | DataBundle,
    config: SearchConfig,
    out_dir: str | Path,
    *,
    arch: dict[str, Any],
    storage: str | None = None,
    study_name: str = "job-local",
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SearchResult | None:
    """Search ``data`` (read through its datasets, see :func:`prepare`), then finalise into
    ``out_dir``. Returns None when stopped before the budget ends (run again with the same
    storage and study name to resume)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = prepare(model, data, config)
    study = open_study(ctx, storage=storage or default_storage(out), study_name=study_name)
    run_trials(ctx, study, on_progress=on_progress, should_stop=should_stop)
    if should_stop():
        return None
    return finalize(ctx, study, out, arch=arch)
