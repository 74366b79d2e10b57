"""Helpers shared by the data sources: argument checks, seeded splits, normalisation, bundling."""

from __future__ import annotations

import numpy as np
import torch

from worker.data._bundle import DataBundle
from worker.data._errors import DatasetError

__all__ = [
    "cap_train",
    "channel_stats",
    "check_split_args",
    "make_bundle",
    "normalise",
    "stratified_split",
]


def check_split_args(*, seed: int, val_fraction: float, max_train: int | None) -> None:
    """Raise :class:`DatasetError` for a seed, validation fraction or train cap out of range."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise DatasetError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise DatasetError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if max_train is not None and (
        isinstance(max_train, bool) or not isinstance(max_train, int) or max_train < 1
    ):
        raise DatasetError(f"max_train must be None or a positive integer, got {max_train!r}")


def stratified_split(
    labels: np.ndarray, *, seed: int, val_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded, stratified train/validation split of ``labels``.

    Each class contributes ``round(n_class * val_fraction)`` examples to validation; both index
    arrays are then shuffled. The same ``seed`` always gives the same split.
    """
    rng = np.random.default_rng(seed)
    train_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(np.floor(len(members) * val_fraction + 0.5))
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    train_idx = rng.permutation(np.concatenate(train_parts)) if train_parts else np.empty(0, int)
    val_idx = rng.permutation(np.concatenate(val_parts)) if val_parts else np.empty(0, int)
    if len(train_idx) == 0 or len(val_idx) == 0:
        empty = "training" if len(train_idx) == 0 else "validation"
        raise DatasetError(
            f"val_fraction={val_fraction} leaves the {empty} split empty "
            f"({len(labels)} examples in all); use more data or another val_fraction"
        )
    return train_idx, val_idx


def cap_train(
    x: np.ndarray, y: np.ndarray, *, max_train: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep a seeded random subset of at most ``max_train`` training examples, in order."""
    if max_train is None or len(y) <= max_train:
        return x, y
    keep = np.sort(np.random.default_rng(seed).permutation(len(y))[:max_train])
    return x[keep], y[keep]


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``x`` (N, C, H, W); a zero std becomes 1."""
    channels = x.shape[1]
    mean = np.array([x[:, c].mean(dtype=np.float64) for c in range(channels)])
    std = np.array([x[:, c].std(dtype=np.float64) for c in range(channels)])
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per channel, in float32; ``x`` is (N, C, H, W)."""
    out = np.asarray(x, dtype=np.float32)
    shape = (1, -1, 1, 1)
    return (out - mean.reshape(shape).astype(np.float32)) / std.reshape(shape).astype(np.float32)


def make_bundle(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
) -> DataBundle:
    """Wrap numpy splits as a :class:`DataBundle` (float32 NCHW images, int64 labels)."""
    return DataBundle(
        name=name,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        x_val=torch.from_numpy(np.ascontiguousarray(x_val, dtype=np.float32)),
        y_val=torch.from_numpy(np.ascontiguousarray(y_val, dtype=np.int64)),
        num_classes=int(num_classes),
    )
