"""CIFAR-10 in torchvision's on-disk format, under an operator-allowed data root.

The directory is ``cifar-10-batches-py`` itself or a folder containing it, with the pickled
batches ``data_batch_1`` ... ``data_batch_5`` (training) and ``test_batch`` (used as validation).
Each batch is a dict with ``data``, a ``(n, 3072)`` uint8 array (1024 red, 1024 green, 1024 blue
values per image, row-major 32x32), and ``labels``, ``n`` ints in 0..9 (keys may be ``bytes`` or
``str``). Batches are read with :func:`~worker.data._safe_pickle.restricted_load`, never with a
plain ``pickle.load``.

Images are scaled to [0, 1] and normalised with the usual CIFAR-10 training-set constants
(mean 0.4914, 0.4822, 0.4465; std 0.2470, 0.2435, 0.2616), so the preprocessing matches models
trained the common way whatever the seed. ``seed`` only matters when ``max_train`` caps the
training set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worker.data._bundle import DataBundle
from worker.data._errors import DatasetError
from worker.data._limits import DEFAULT_LIMITS, DataLimits
from worker.data._paths import resolve_data_path
from worker.data._safe_pickle import restricted_load
from worker.data._split import cap_train, check_split_args, make_bundle, normalise

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "load_cifar10"]

logger = logging.getLogger(__name__)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_BASE_FOLDER = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_VAL_BATCH = "test_batch"
_NUM_CLASSES = 10


def load_cifar10(
    path: str | os.PathLike[str],
    *,
    allowed_roots: Sequence[Path],
    seed: int = 0,
    limits: DataLimits = DEFAULT_LIMITS,
    max_train: int | None = None,
) -> DataBundle:
    """Load CIFAR-10 (train: the five data batches; validation: ``test_batch``).

    Raises:
        DataPathError: the directory or a batch lies outside the allowed roots.
        UnsafePickleError: a batch pickle names anything but numpy's array-rebuilding globals.
        DatasetError: a batch is missing or malformed.
        DataLimitError: a batch file or the total number of examples is too large.
    """
    check_split_args(seed=seed, val_fraction=0.5, max_train=max_train)
    base = resolve_data_path(path, allowed_roots)
    if (base / _BASE_FOLDER).is_dir():
        base = resolve_data_path(base / _BASE_FOLDER, allowed_roots)
    if not base.is_dir():
        raise DatasetError(f"CIFAR-10 path {str(path)!r} is not a directory")
    limits.check_image_side("CIFAR-10", 32, 32)
    parts = [_read_batch(base, name, allowed_roots, limits) for name in _TRAIN_BATCHES]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_val, y_val = _read_batch(base, _VAL_BATCH, allowed_roots, limits)
    limits.check_examples("CIFAR-10", len(y_train) + len(y_val))
    x_train, y_train = cap_train(x_train, y_train, max_train=max_train, seed=seed)
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32)
    std = np.asarray(CIFAR10_STD, dtype=np.float32)
    logger.info("loaded CIFAR-10 from %s: %d train, %d val", base, len(y_train), len(y_val))
    return make_bundle(
        "cifar10",
        normalise(_to_images(x_train), mean, std),
        y_train,
        normalise(_to_images(x_val), mean, std),
        y_val,
        num_classes=_NUM_CLASSES,
    )


def _read_batch(
    base: Path, name: str, allowed_roots: Sequence[Path], limits: DataLimits
) -> tuple[np.ndarray, np.ndarray]:
    """``(data (n, 3072) uint8, labels (n,) int64)`` of one batch file."""
    candidate = base / name
    if not os.path.lexists(candidate):
        raise DatasetError(
            f"CIFAR-10 batch {name!r} is missing; expected {', '.join(_TRAIN_BATCHES)} and "
            f"{_VAL_BATCH} in {base.name!r}"
        )
    file = resolve_data_path(candidate, allowed_roots)
    if not file.is_file():
        raise DatasetError(f"CIFAR-10 batch {name!r} is not a regular file")
    limits.check_file_bytes(f"CIFAR-10 batch {name!r}", file.stat().st_size)
    with file.open("rb") as fp:
        batch = restricted_load(fp, what=f"CIFAR-10 batch {name!r}")
    if not isinstance(batch, dict):
        raise DatasetError(f"CIFAR-10 batch {name!r} holds a {type(batch).__name__}; expected dict")
    entries = {_key(k): v for k, v in batch.items()}
    data, labels = entries.get("data"), entries.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetError(f"CIFAR-10 batch {name!r}: 'data' must be a 2-D uint8 numpy array")
    if data.shape[1] != 3 * 32 * 32 or data.shape[0] == 0:
        raise DatasetError(
            f"CIFAR-10 batch {name!r}: 'data' has shape {data.shape}; expected (n, 3072), n >= 1"
        )
    y = _labels(name, labels)
    if len(y) != data.shape[0]:
        raise DatasetError(
            f"CIFAR-10 batch {name!r}: {data.shape[0]} images but {len(y)} labels; they must match"
        )
    return data, y


def _key(key: Any) -> Any:
    return key.decode("latin-1") if isinstance(key, bytes) else key


def _labels(name: str, labels: Any) -> np.ndarray:
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise DatasetError(f"CIFAR-10 batch {name!r}: 'labels' is missing or not a list of ints")
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"CIFAR-10 batch {name!r}: 'labels' is not a list of ints") from exc
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DatasetError(f"CIFAR-10 batch {name!r}: 'labels' must be a flat list of ints")
    if len(y) and (y.min() < 0 or y.max() >= _NUM_CLASSES):
        raise DatasetError(
            f"CIFAR-10 batch {name!r}: labels must lie in 0..{_NUM_CLASSES - 1}, "
            f"found {y.min()}..{y.max()}"
        )
    return y.astype(np.int64)


def _to_images(data: np.ndarray) -> np.ndarray:
    """(n, 3072) uint8 rows -> (n, 3, 32, 32) float32 in [0, 1]."""
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
