"""Helpers shared by the worker.data tests."""

from __future__ import annotations

import torch

from worker.data import (
    DataBundle,
)


def check_bundle(bundle: DataBundle, chw: tuple[int, int, int], num_classes: int) -> None:
    assert bundle.x_train.dtype == torch.float32 and bundle.x_val.dtype == torch.float32
    assert bundle.y_train.dtype == torch.int64 and bundle.y_val.dtype == torch.int64
    assert bundle.x_train.shape[1:] == chw and bundle.x_val.shape[1:] == chw
    assert bundle.input_shape == chw
    assert len(bundle.x_train) == len(bundle.y_train) > 0
    assert len(bundle.x_val) == len(bundle.y_val) > 0
    assert bundle.num_classes == num_classes
    for y in (bundle.y_train, bundle.y_val):
        assert int(y.min()) >= 0 and int(y.max()) < num_classes
    assert torch.isfinite(bundle.x_train).all() and torch.isfinite(bundle.x_val).all()
    assert bundle.x_train.is_contiguous()
