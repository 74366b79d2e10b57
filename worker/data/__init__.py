"""Data sources for compression jobs: built-in datasets, uploaded arrays, image folders.

:func:`open_dataset` returns :class:`DataSplits`: train/val/test as ``torch.utils.data``
datasets (:class:`ArrayDataset` in memory, :class:`FolderDataset` decoded lazily), all carved
out with a ``split_seed`` that belongs to the data. :func:`load_dataset` returns the same
splits decoded into a :class:`DataBundle` of tensors. Errors with the user's data are
:class:`DatasetError` (a ``ValueError``) or one of its subclasses, each with a stable ``code``.
"""

from __future__ import annotations

from worker.data._arrays import ARRAY_KEYS, TEST_KEYS, load_arrays, open_arrays
from worker.data._builtin import (
    BUILTIN_TEST_FRACTION,
    FASHION_MNIST_DIR,
    FASHION_MNIST_PACKAGE,
    list_builtin_datasets,
    load_breast_cancer,
    load_breast_cancer_seq,
    load_digits,
    load_fashion_mnist,
    load_mnist5k,
    open_builtin,
    open_fashion_mnist,
)
from worker.data._bundle import SPLIT_NAMES, DataBundle, DataSplits, materialize
from worker.data._cifar import load_cifar10, open_cifar10
from worker.data._datasets import ArrayDataset, FolderDataset, LabeledDataset, Transform
from worker.data._errors import (
    DataLimitError,
    DataPathError,
    DatasetError,
    InputShapeError,
    MissingDatasetPackageError,
    SplitError,
    UnsafePickleError,
)
from worker.data._folders import (
    IMAGE_EXTENSIONS,
    STATS_SAMPLES,
    ImageDecoder,
    load_image_folder,
    open_image_folder,
)
from worker.data._limits import DEFAULT_LIMITS, DataLimits
from worker.data._load import SOURCE_FORMS, load_dataset, open_dataset
from worker.data._paths import resolve_data_path
from worker.data._safe_pickle import RestrictedUnpickler, restricted_load
from worker.data._transforms import (
    AUGMENTATIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESS_PRESETS,
    Augment,
    Preprocess,
    check_augment,
    check_preprocess,
    imagenet_eval_transform,
    train_transform,
)

__all__ = [
    "ARRAY_KEYS",
    "AUGMENTATIONS",
    "BUILTIN_TEST_FRACTION",
    "DEFAULT_LIMITS",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_PACKAGE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "PREPROCESS_PRESETS",
    "SOURCE_FORMS",
    "SPLIT_NAMES",
    "STATS_SAMPLES",
    "TEST_KEYS",
    "ArrayDataset",
    "Augment",
    "DataBundle",
    "DataLimitError",
    "DataLimits",
    "DataPathError",
    "DataSplits",
    "DatasetError",
    "FolderDataset",
    "ImageDecoder",
    "InputShapeError",
    "LabeledDataset",
    "MissingDatasetPackageError",
    "Preprocess",
    "RestrictedUnpickler",
    "SplitError",
    "Transform",
    "UnsafePickleError",
    "check_augment",
    "check_preprocess",
    "imagenet_eval_transform",
    "list_builtin_datasets",
    "load_arrays",
    "load_breast_cancer",
    "load_breast_cancer_seq",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist5k",
    "materialize",
    "open_arrays",
    "open_builtin",
    "open_cifar10",
    "open_dataset",
    "open_fashion_mnist",
    "open_image_folder",
    "resolve_data_path",
    "restricted_load",
    "train_transform",
]
