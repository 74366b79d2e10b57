"""Shared test configuration: deterministic torch, few threads."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
