"""Shared test configuration: deterministic torch, few threads; ``owner``, an API key of the
``store`` fixture that each test folder defines (``tests/service``, ``tests/worker``)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from service.store import ApiKeyRecord, Store

# The suite's models are tiny: one intra-op thread avoids thread hand-off that dominates them.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture
def owner(store: Store) -> ApiKeyRecord:
    return store.create_api_key("alice")[1]
