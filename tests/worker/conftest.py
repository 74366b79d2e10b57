"""Fixtures shared by the worker tests: the digits data and a tinycnn trained on it once; the
pool's ``settings`` (SQLite in the test's folder), ``store`` and ``owner`` (an API key)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from service.settings import Settings
from service.store import Store
from tests.worker.pool_support import make_settings
from worker.data import DataBundle, load_dataset
from worker.training import train
from worker.zoo import get_model


@pytest.fixture(scope="session")
def data() -> DataBundle:
    """digits split 80 / 20 with no test split carved out: the search never reads the test
    split, and these tests' tolerances were set on the larger training split."""
    return load_dataset("digits", test_fraction=0.0)


@pytest.fixture(scope="session")
def trained(data: DataBundle) -> nn.Module:
    """tinycnn trained once per session (about 97% on digits in a few seconds). Tests must
    copy it before changing it."""
    torch.manual_seed(0)
    model = get_model("rankopt:tinycnn", num_classes=10)
    result = train(model, data, epochs=30, optimizer="adamw", lr=0.01, device="cpu")
    assert result.final_val_accuracy > 0.93
    return model.eval()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store.from_settings(settings)
    try:
        yield s
    finally:
        s.dispose()
