"""The entry points that turn a dataset source string into :class:`DataSplits` or a bundle."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from worker.data._arrays import open_arrays
from worker.data._builtin import BUILTIN_TEST_FRACTION, list_builtin_datasets, open_builtin
from worker.data._bundle import DataBundle, DataSplits
from worker.data._cifar import CIFAR10_SIDE, open_cifar10
from worker.data._errors import DatasetError
from worker.data._folders import open_image_folder
from worker.data._limits import DEFAULT_LIMITS, DataLimits
from worker.data._split import resolve_split_seed
from worker.data._transforms import check_image_size, check_preprocess

__all__ = ["SOURCE_FORMS", "load_dataset", "open_dataset"]

SOURCE_FORMS = (
    '"digits", "mnist5k", "fashion-mnist", "breast-cancer" or "breast-cancer-seq" (built in)',
    'a path to an uploaded ".npz" or ".safetensors" file',
    '"folder:<path>" (an ImageFolder tree under an allowed data root)',
    '"cifar10:<path>" (a CIFAR-10 python-batches directory under an allowed data root)',
)


def open_dataset(
    source: str,
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = BUILTIN_TEST_FRACTION,
    allowed_roots: Sequence[Path] = (),
    limits: DataLimits = DEFAULT_LIMITS,
    max_train: int | None = None,
    image_size: int = 32,
    preprocess: str = "resize",
) -> DataSplits:
    """Open the dataset named by ``source`` as train/val/test datasets.

    ``source`` is one of:

    * ``"digits"``, ``"mnist5k"``, ``"fashion-mnist"``, ``"breast-cancer"`` or
      ``"breast-cancer-seq"``: built in (see
      :mod:`worker.data._builtin` for their splits);
    * a path ending in ``.npz`` or ``.safetensors``: an uploaded file with ``x_train, y_train,
      x_val, y_val`` and optionally ``x_test, y_test``, opened as given (the caller confines it
      to its upload folder);
    * ``"folder:<path>"``: an ImageFolder tree (flat, or with ``train/``, ``val/``, ``test/``
      sub-trees), decoded lazily with ``preprocess`` (``"resize"`` to ``image_size``, or
      ``"imagenet"``);
    * ``"cifar10:<path>"``: CIFAR-10 batches, ``test_batch`` as the test split; its images are
      32x32, so ``image_size`` must be 32 and ``preprocess`` ``"resize"`` (anything else is
      refused rather than silently ignored).

    Built-in datasets and arrays keep their own shape: ``image_size`` and ``preprocess`` are
    checked but ignored.

    Every carve-out (validation, test, the ``max_train`` cap) is seeded by ``split_seed``, which
    belongs to the data: keep it when the search seed changes, so a model's training images
    never reach its validation or test split. ``val_fraction`` ``None`` is the source's default;
    ``test_fraction`` applies where a source has no test split of its own (built-ins without an
    official test set, flat folders). Folder and CIFAR paths must resolve inside
    ``allowed_roots`` (relative paths are taken relative to each root).

    Raises:
        DatasetError: an unknown source form, or any problem with the data (see the loaders);
            :class:`DataPathError`, :class:`DataLimitError`, :class:`SplitError` and
            :class:`MissingDatasetPackageError` are subclasses.
    """
    if not isinstance(source, str) or not source.strip():
        raise DatasetError(f"dataset source must be a non-empty string, got {source!r}")
    check_preprocess(preprocess)
    check_image_size(image_size)
    if source in list_builtin_datasets():
        return open_builtin(
            source,
            split_seed=split_seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            max_train=max_train,
        )
    kind, sep, rest = source.partition(":")
    if sep and kind == "folder":
        return open_image_folder(
            _nonempty(rest, kind),
            allowed_roots=allowed_roots,
            image_size=image_size,
            split_seed=split_seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            limits=limits,
            max_train=max_train,
            preprocess=preprocess,
        )
    if sep and kind == "cifar10":
        if image_size != CIFAR10_SIDE or preprocess != "resize":
            raise DatasetError(
                f"cifar10: images are {CIFAR10_SIDE}x{CIFAR10_SIDE} and are not resized: "
                f"image_size must be {CIFAR10_SIDE} and preprocess 'resize', got image_size="
                f"{image_size} and preprocess={preprocess!r}"
            )
        return open_cifar10(
            _nonempty(rest, kind),
            allowed_roots=allowed_roots,
            split_seed=split_seed,
            val_fraction=val_fraction,
            limits=limits,
            max_train=max_train,
        )
    if source.lower().endswith((".npz", ".safetensors")):
        return open_arrays(source, split_seed=split_seed, limits=limits, max_train=max_train)
    raise DatasetError(
        f"unknown dataset source {source!r}; expected one of: " + "; ".join(SOURCE_FORMS)
    )


def load_dataset(
    source: str,
    *,
    split_seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = BUILTIN_TEST_FRACTION,
    allowed_roots: Sequence[Path] = (),
    limits: DataLimits = DEFAULT_LIMITS,
    max_train: int | None = None,
    image_size: int = 32,
    preprocess: str = "resize",
    seed: int | None = None,
) -> DataBundle:
    """:func:`open_dataset` decoded into a :class:`DataBundle` of tensors.

    For data that fits in memory; an image folder is decoded whole. ``seed`` is the old name
    of ``split_seed`` (it always meant the split seed, never the search seed).
    """
    return open_dataset(
        source,
        split_seed=resolve_split_seed(split_seed, seed),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        allowed_roots=allowed_roots,
        limits=limits,
        max_train=max_train,
        image_size=image_size,
        preprocess=preprocess,
    ).to_bundle()


def _nonempty(path: str, kind: str) -> str:
    if not path:
        raise DatasetError(f'"{kind}:" needs a path after the colon, as in "{kind}:<path>"')
    return path
