"""CIFAR-10 in torchvision's on-disk format, under an operator-allowed data root.

The directory is ``cifar-10-batches-py`` itself or a folder containing it, with the pickled
batches ``data_batch_1`` ... ``data_batch_5`` (training; validation, ``val_fraction`` of them,
default 0.1 = 5,000 images, is carved out seeded and stratified) and ``test_batch`` (the test
split).
Each batch is a dict with ``data``, a ``(n, 3072)`` uint8 array (1024 red, 1024 green, 1024 blue
values per image, row-major 32x32), and ``labels``, ``n`` ints in 0..9 (keys may be ``bytes`` or
``str``). Batches are read with :func:`~worker.data._safe_pickle.restricted_load`, never with a
plain ``pickle.load``.

Images are scaled to [0, 1] and normalised with the usual CIFAR-10 training-set constants
(mean 0.4914, 0.4822, 0.4465; std 0.2470, 0.2435, 0.2616), so the preprocessing matches models
trained the common way whatever the seed. Images are held as uint8 (150 MB for the whole set)
and normalised per batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.data._bundle import DataBundle, DataSplits, array_splits
from worker.data._errors import DatasetError
from worker.data._limits import DEFAULT_LIMITS, DataLimits
from worker.data._paths import resolve_data_path
from worker.data._safe_pickle import restricted_load
from worker.data._split import cap_index, check_split_args, resolve_split_seed, stratified_split

__all__ = ["CIFAR10_MEAN", "CIFAR10_SIDE", "CIFAR10_STD", "load_cifar10", "open_cifar10"]

logger = logging.getLogger(__name__)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_SIDE = 32
_BASE_FOLDER = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
CIFAR10_VAL_FRACTION = 0.1
_NUM_CLASSES = 10


def load_cifar10(
    path: str | os.PathLike[str],
    *,
    allowed_roots: Sequence[Path],
    split_seed: int = 0,
    val_fraction: float | None = None,
    limits: DataLimits = DEFAULT_LIMITS,
    max_train: int | None = None,
    seed: int | None = None,
) -> DataBundle:
    """:func:`open_cifar10` as a :class:`DataBundle` (``seed``: old name of ``split_seed``)."""
    return open_cifar10(
        path,
        allowed_roots=allowed_roots,
        split_seed=resolve_split_seed(split_seed, seed),
        val_fraction=val_fraction,
        limits=limits,
        max_train=max_train,
    ).to_bundle()


def open_cifar10(
    path: str | os.PathLike[str],
    *,
    allowed_roots: Sequence[Path],
    split_seed: int = 0,
    val_fraction: float | None = None,
    limits: DataLimits = DEFAULT_LIMITS,
    max_train: int | None = None,
) -> DataSplits:
    """CIFAR-10: train and val from the five data batches, test from ``test_batch``.

    Raises:
        DataPathError: the directory or a batch lies outside the allowed roots.
        UnsafePickleError: a batch pickle names anything but numpy's array-rebuilding globals.
        DatasetError: a batch is missing or malformed.
        DataLimitError: a batch file or the total number of examples is too large.
    """
    val = CIFAR10_VAL_FRACTION if val_fraction is None else val_fraction
    check_split_args(seed=split_seed, val_fraction=val, max_train=max_train)
    base = resolve_data_path(path, allowed_roots)
    if (base / _BASE_FOLDER).is_dir():
        base = resolve_data_path(base / _BASE_FOLDER, allowed_roots)
    if not base.is_dir():
        raise DatasetError(f"CIFAR-10 path {str(path)!r} is not a directory")
    limits.check_image_side("CIFAR-10", CIFAR10_SIDE, CIFAR10_SIDE)
    parts = [_read_batch(base, name, allowed_roots, limits) for name in _TRAIN_BATCHES]
    x_all = np.concatenate([p[0] for p in parts])
    y_all = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_batch(base, _TEST_BATCH, allowed_roots, limits)
    limits.check_examples("CIFAR-10", len(y_all) + len(y_test))
    train_idx, val_idx = stratified_split(y_all, seed=split_seed, val_fraction=val)
    train_idx = np.sort(train_idx)  # file order, as before validation was carved out
    keep = cap_index(len(train_idx), max_train=max_train, seed=split_seed)
    if keep is not None:
        train_idx = train_idx[keep]
    images, labels = torch.from_numpy(_to_images(x_all)), torch.from_numpy(y_all)
    tr, va = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    logger.info(
        "loaded CIFAR-10 from %s: %d train, %d val, %d test", base, len(tr), len(va), len(y_test)
    )
    return array_splits(
        "cifar10",
        train=(images[tr], labels[tr], tr),
        val=(images[va], labels[va], va),
        test=(
            torch.from_numpy(_to_images(x_test)),
            torch.from_numpy(y_test),
            len(labels) + torch.arange(len(y_test)),
        ),
        num_classes=_NUM_CLASSES,
        split_seed=split_seed,
        test_note="CIFAR-10's test_batch",
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )


def _read_batch(
    base: Path, name: str, allowed_roots: Sequence[Path], limits: DataLimits
) -> tuple[np.ndarray, np.ndarray]:
    """``(data (n, 3072) uint8, labels (n,) int64)`` of one batch file."""
    candidate = base / name
    if not os.path.lexists(candidate):
        raise DatasetError(
            f"CIFAR-10 batch {name!r} is missing; expected {', '.join(_TRAIN_BATCHES)} and "
            f"{_TEST_BATCH} in {base.name!r}"
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
    """(n, 3072) uint8 rows -> (n, 3, 32, 32) uint8."""
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
