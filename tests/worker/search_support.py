"""Helpers shared by the search tests (test_search.py, test_search_finalize.py, test_lc.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from torch import nn

from worker.data import DataBundle
from worker.search import (
    SEED_ATTR,
    SearchConfig,
    SearchContext,
    SearchResult,
    finalize,
    open_study,
    prepare,
    run_trials,
)

ARCH = {"arch": "rankopt:tinycnn", "kwargs": {"num_classes": 10, "in_channels": 1}}
MAX_DROP = 3.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_config(**overrides: Any) -> SearchConfig:
    settings: dict[str, Any] = {
        "trials": 8,
        "epochs_per_trial": 3,
        "final_epochs": 4,
        "batch_size": 64,
        "device": "cpu",
        "max_accuracy_drop": MAX_DROP,
    }
    settings.update(overrides)
    return SearchConfig(**settings)


def quick_config(**overrides: Any) -> SearchConfig:
    """For tests about the machinery rather than the result: one epoch a trial, no final run."""
    settings: dict[str, Any] = {"trials": 3, "epochs_per_trial": 1, "final_epochs": 0}
    settings.update(overrides)
    return make_config(**settings)


def sqlite(path: Path) -> str:
    return f"sqlite:///{path}"


def memory_search(
    model: nn.Module, data: DataBundle, config: SearchConfig, out: Path, name: str = "job"
) -> tuple[SearchContext, optuna.Study, SearchResult]:
    """What run_search does, on an in-memory storage (SQLite costs ~0.4 s a trial here)."""
    ctx = prepare(model, data, config)
    study = open_study(ctx, storage=optuna.storages.InMemoryStorage(), study_name=name)
    run_trials(ctx, study)
    return ctx, study, finalize(ctx, study, out, arch=ARCH)


def seed_labels(trials: list[Any]) -> list[str]:
    return [t.user_attrs[SEED_ATTR] for t in trials if SEED_ATTR in t.user_attrs]
