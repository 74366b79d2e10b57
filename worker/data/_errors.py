"""The exception hierarchy of the data sources.

Every problem with a user's data surfaces as a :class:`DatasetError` (a ``ValueError``) whose
message names the offending key, file or value and says what was expected. Callers that want to
map failures onto HTTP codes can tell the subclasses apart, or read the stable ``code`` each
class carries.
"""

from __future__ import annotations

from worker.errors import WorkerError

__all__ = [
    "DataLimitError",
    "DataPathError",
    "DatasetError",
    "InputShapeError",
    "MissingDatasetPackageError",
    "SplitError",
    "UnsafePickleError",
]


class DatasetError(WorkerError, ValueError):
    """The data cannot be used: missing, malformed, inconsistent or not understood."""

    code = "invalid_dataset"


class DataLimitError(DatasetError):
    """The data is well formed but larger than the operator's :class:`DataLimits` allow."""

    code = "dataset_too_large"


class DataPathError(DatasetError):
    """A data path lies outside every operator-allowed data root (or, with code
    ``data_path_not_found``, does not exist under them)."""

    code = "data_path_not_allowed"


class UnsafePickleError(DatasetError):
    """A pickle asked for a global outside the small set needed to rebuild numpy arrays."""

    code = "unsafe_pickle"


class InputShapeError(DatasetError):
    """The data's examples are not the shape the model takes (an image folder resized to
    another ``image_size`` than the model's side, say)."""

    code = "input_shape_mismatch"


class SplitError(DatasetError):
    """The train/val/test splits a source declares do not fit together.

    ``x_test`` without ``y_test`` (or of another image shape), an empty ``test/`` folder, a
    class in ``val/`` or ``test/`` that ``train/`` lacks.
    """

    code = "dataset_split_invalid"


class MissingDatasetPackageError(DatasetError):
    """A built-in dataset's files are not installed; ``package`` names what provides them."""

    code = "dataset_package_missing"

    def __init__(self, message: str, *, package: str) -> None:
        super().__init__(message)
        self.package = package
