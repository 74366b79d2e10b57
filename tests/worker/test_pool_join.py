"""A worker joining a search takes what the prepare phase measured from the study: the
baseline's accuracy and loss, the EVBMF ranks (the search space) and the learning-rate
calibration are not measured again, and are the very same values."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from service.store import ApiKeyRecord, Store
from tests.worker.pool_support import submit, train_weights
from worker.pool import Worker
from worker.search import _context as context_module
from worker.search import prepared_summary


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_weights(tmp_path_factory)


def _counting(monkeypatch: pytest.MonkeyPatch, calls: Counter[str], name: str) -> None:
    original = getattr(context_module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(context_module, name, counted)


def test_a_joining_worker_reads_the_prepared_context_from_the_study(
    settings: Settings,
    store: Store,
    owner: ApiKeyRecord,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = store.load_job(submit(store, settings, owner, weights, trials=2).id)
    calls: Counter[str] = Counter()
    for name in ("evaluate", "build_space", "calibrate_lr"):
        _counting(monkeypatch, calls, name)
    first = Worker(settings, store, worker_id="w-first", device="cpu")
    joiner = Worker(settings, store, worker_id="w-join", device="cpu")
    try:
        prepared = first.build_context(job, create=True)
        assert prepared is not None
        assert calls == Counter(evaluate=1, build_space=1, calibrate_lr=1)
        calls.clear()
        joined = joiner.build_context(job, create=False)
        assert joined is not None
    finally:
        first.close()
        joiner.close()
    assert calls == Counter()  # nothing measured again
    a, b = prepared.ctx, joined.ctx
    assert b.baseline_accuracy == a.baseline_accuracy
    assert b.baseline_loss == a.baseline_loss
    assert b.spaces == a.spaces
    assert b.lr_calibration == a.lr_calibration
    assert prepared_summary(b) == prepared_summary(a)
    assert [x.name for x in b.layers] == [x.name for x in a.layers]
    assert b.baseline_cost == a.baseline_cost
