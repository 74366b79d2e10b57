"""The one entry point that turns a dataset source string into a :class:`DataBundle`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from worker.data._arrays import load_arrays
from worker.data._builtin import list_builtin_datasets, load_builtin
from worker.data._bundle import DataBundle
from worker.data._cifar import load_cifar10
from worker.data._errors import DatasetError
from worker.data._folders import load_image_folder
from worker.data._limits import DEFAULT_LIMITS, DataLimits

__all__ = ["SOURCE_FORMS", "load_dataset"]

SOURCE_FORMS = (
    '"digits", "mnist5k", "breast-cancer" or "breast-cancer-seq" (built in)',
    'a path to an uploaded ".npz" or ".safetensors" file',
    '"folder:<path>" (an ImageFolder tree under an allowed data root)',
    '"cifar10:<path>" (a CIFAR-10 python-batches directory under an allowed data root)',
)


def load_dataset(
    source: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    allowed_roots: Sequence[Path] = (),
    limits: DataLimits = DEFAULT_LIMITS,
    max_train: int | None = None,
    image_size: int = 32,
) -> DataBundle:
    """Load the dataset named by ``source``.

    ``source`` is one of:

    * ``"digits"``, ``"mnist5k"``, ``"breast-cancer"`` or ``"breast-cancer-seq"``: built-in,
      split by ``seed`` and ``val_fraction``;
    * a path ending in ``.npz`` or ``.safetensors``: an uploaded file with ``x_train, y_train,
      x_val, y_val``, opened as given (the caller confines it to its upload folder);
    * ``"folder:<path>"``: an ImageFolder tree, resized to ``image_size``, split by ``seed`` and
      ``val_fraction``;
    * ``"cifar10:<path>"``: CIFAR-10 batches, ``test_batch`` as validation.

    Folder and CIFAR paths must resolve inside ``allowed_roots`` (relative paths are taken
    relative to each root). ``max_train`` caps the training split with a seeded random subset.

    Raises:
        DatasetError: an unknown source form, or any problem with the data (see the loaders);
            :class:`DataPathError` and :class:`DataLimitError` are subclasses.
    """
    if not isinstance(source, str) or not source.strip():
        raise DatasetError(f"dataset source must be a non-empty string, got {source!r}")
    if source in list_builtin_datasets():
        return load_builtin(source, seed=seed, val_fraction=val_fraction, max_train=max_train)
    kind, sep, rest = source.partition(":")
    if sep and kind == "folder":
        return load_image_folder(
            _nonempty(rest, kind),
            allowed_roots=allowed_roots,
            image_size=image_size,
            seed=seed,
            val_fraction=val_fraction,
            limits=limits,
            max_train=max_train,
        )
    if sep and kind == "cifar10":
        return load_cifar10(
            _nonempty(rest, kind),
            allowed_roots=allowed_roots,
            seed=seed,
            limits=limits,
            max_train=max_train,
        )
    if source.lower().endswith((".npz", ".safetensors")):
        return load_arrays(source, seed=seed, limits=limits, max_train=max_train)
    raise DatasetError(
        f"unknown dataset source {source!r}; expected one of: " + "; ".join(SOURCE_FORMS)
    )


def _nonempty(path: str, kind: str) -> str:
    if not path:
        raise DatasetError(f'"{kind}:" needs a path after the colon, as in "{kind}:<path>"')
    return path
