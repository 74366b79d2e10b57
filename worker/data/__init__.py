"""Data sources for compression jobs: built-in datasets, uploaded arrays, image folders.

Everything goes through :func:`load_dataset`, which returns a :class:`DataBundle`; errors with
the user's data are :class:`DatasetError` (a ``ValueError``) or one of its subclasses.
"""

from __future__ import annotations

from worker.data._arrays import ARRAY_KEYS, load_arrays
from worker.data._builtin import (
    list_builtin_datasets,
    load_breast_cancer,
    load_breast_cancer_seq,
    load_digits,
    load_mnist5k,
)
from worker.data._bundle import DataBundle
from worker.data._cifar import load_cifar10
from worker.data._errors import DataLimitError, DataPathError, DatasetError, UnsafePickleError
from worker.data._folders import IMAGE_EXTENSIONS, load_image_folder
from worker.data._limits import DEFAULT_LIMITS, DataLimits
from worker.data._load import SOURCE_FORMS, load_dataset
from worker.data._paths import resolve_data_path
from worker.data._safe_pickle import RestrictedUnpickler, restricted_load

__all__ = [
    "ARRAY_KEYS",
    "DEFAULT_LIMITS",
    "IMAGE_EXTENSIONS",
    "SOURCE_FORMS",
    "DataBundle",
    "DataLimitError",
    "DataLimits",
    "DataPathError",
    "DatasetError",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "list_builtin_datasets",
    "load_arrays",
    "load_breast_cancer",
    "load_breast_cancer_seq",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_mnist5k",
    "resolve_data_path",
    "restricted_load",
]
