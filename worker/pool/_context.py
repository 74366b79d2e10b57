"""What a worker keeps in memory per job: the prepared search context and the shared study."""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields

import optuna
from torch import nn

from service.spec import JobSpec
from worker.search import SearchConfig, SearchContext
from worker.training import EpochCallback, EpochReport, FinetuneResult

__all__ = ["ContextCache", "JobContext", "PoolContext", "worker_seed"]


@dataclass
class PoolContext(SearchContext):
    """A :class:`SearchContext` whose fine-tunes call ``interrupt`` after every epoch.

    ``interrupt`` (set while a leased phase runs) raises to abandon the phase: finalising is
    one long call into :func:`worker.search.finalize`, and this is how a lost lease, a cancel or
    a shutdown reaches inside it between epochs.
    """

    interrupt: Callable[[], None] | None = None

    @classmethod
    def of(cls, base: SearchContext) -> PoolContext:
        return cls(**{f.name: getattr(base, f.name) for f in fields(base)})

    def finetune(
        self,
        model: nn.Module,
        *,
        epochs: int,
        seed: int,
        callback: EpochCallback | None = None,
        lr_scale: float | None = None,
        max_steps: int | None = None,
        after_step: Callable[[float], None] | None = None,
        final: bool = False,
    ) -> FinetuneResult:
        hook = self.interrupt
        checked = callback
        if hook is not None:

            def checked(report: EpochReport) -> bool | None:
                hook()
                return callback(report) if callback is not None else None

        return super().finetune(
            model,
            epochs=epochs,
            seed=seed,
            callback=checked,
            lr_scale=lr_scale,
            max_steps=max_steps,
            after_step=after_step,
            final=final,
        )


@dataclass
class JobContext:
    """A job as one worker holds it: spec, config, prepared context and its study."""

    job_id: str
    study_name: str
    spec: JobSpec
    config: SearchConfig
    ctx: PoolContext
    study: optuna.Study
    arch: dict[str, object]


def worker_seed(seed: int, worker_id: str) -> int:
    """The sampler seed of one worker: distinct per worker, so that workers sharing a study do
    not propose the same plans, and stable for a given worker id."""
    return (seed + zlib.crc32(worker_id.encode("utf-8"))) % (2**31 - 1)


class ContextCache:
    """The last ``size`` jobs' contexts, least recently used evicted first. Thread-safe."""

    def __init__(self, size: int = 2) -> None:
        if size < 1:
            raise ValueError(f"the context cache holds at least one job, got {size}")
        self.size = size
        self._items: OrderedDict[str, JobContext] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str) -> JobContext | None:
        with self._lock:
            item = self._items.get(job_id)
            if item is not None:
                self._items.move_to_end(job_id)
            return item

    def put(self, item: JobContext) -> None:
        with self._lock:
            self._items[item.job_id] = item
            self._items.move_to_end(item.job_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def evict(self, job_id: str) -> None:
        with self._lock:
            self._items.pop(job_id, None)

    def job_ids(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
