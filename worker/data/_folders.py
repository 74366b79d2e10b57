"""Image folders in torchvision's ``ImageFolder`` layout, under an operator-allowed data root.

``root/<class name>/<image>`` (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``, ``.webp``,
``.ppm``, ``.tif``, ``.tiff``): classes are the sub-folder names in sorted order, as
``ImageFolder`` numbers them. Hidden entries (``.name``) are skipped. Every image is converted
to RGB and resized to ``image_size`` x ``image_size`` (bilinear), scaled to [0, 1] and normalised
per channel with the mean and std of the training split (or the ``mean``/``std`` given, for a
model trained with known constants). Train and validation come from a seeded stratified split.

Every class folder and image is resolved and must stay inside the allowed roots, so a symlink
inside the tree cannot pull in files from elsewhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from worker.data._bundle import DataBundle
from worker.data._errors import DataLimitError, DatasetError
from worker.data._limits import DEFAULT_LIMITS, DataLimits
from worker.data._paths import resolve_data_path
from worker.data._split import (
    cap_train,
    channel_stats,
    check_split_args,
    make_bundle,
    normalise,
    stratified_split,
)

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
)


def load_image_folder(
    path: str | os.PathLike[str],
    *,
    allowed_roots: Sequence[Path],
    image_size: int = 32,
    seed: int = 0,
    val_fraction: float = 0.2,
    limits: DataLimits = DEFAULT_LIMITS,
    max_train: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataBundle:
    """Load an ``ImageFolder``-style tree found under one of ``allowed_roots``.

    Raises:
        DataPathError: the folder, a class folder or an image lies outside the allowed roots.
        DatasetError: fewer than two classes, an empty class, an unreadable image.
        DataLimitError: too many images, an image file or image too large, ``image_size`` above
            ``limits.max_image_side``.
    """
    check_split_args(seed=seed, val_fraction=val_fraction, max_train=max_train)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DatasetError(f"image_size must be a positive integer, got {image_size!r}")
    limits.check_image_side("the requested", image_size, image_size)
    if (mean is None) != (std is None):
        raise DatasetError("give both mean and std, or neither")
    root = resolve_data_path(path, allowed_roots)
    if not root.is_dir():
        raise DatasetError(f"image folder {str(path)!r} is not a directory")
    files, labels, classes = _list_images(root, allowed_roots, limits)
    images = np.stack([_read_image(f, image_size, limits) for f in files])  # (N, H, W, 3) uint8
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)  # (N, 3, H, W)
    y = np.asarray(labels, dtype=np.int64)
    train_idx, val_idx = stratified_split(y, seed=seed, val_fraction=val_fraction)
    x_train, y_train = cap_train(x[train_idx], y[train_idx], max_train=max_train, seed=seed)
    if mean is None or std is None:
        mu, sigma = channel_stats(x_train)
    else:
        mu, sigma = _given_stats(mean, std)
    logger.info(
        "loaded image folder %s: %d classes, %d train, %d val",
        root.name,
        len(classes),
        len(y_train),
        len(val_idx),
    )
    return make_bundle(
        f"folder:{root.name}",
        normalise(x_train, mu, sigma),
        y_train,
        normalise(x[val_idx], mu, sigma),
        y[val_idx],
        num_classes=len(classes),
    )


def _list_images(
    root: Path, allowed_roots: Sequence[Path], limits: DataLimits
) -> tuple[list[Path], list[int], list[str]]:
    """Image files, their class indices and the sorted class names."""
    class_dirs = sorted(
        entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    if len(class_dirs) < 2:
        raise DatasetError(
            f"image folder {root.name!r} holds {len(class_dirs)} class folder(s); expected at "
            "least 2 (root/<class name>/<image files>)"
        )
    if len(class_dirs) > limits.max_classes:
        raise DataLimitError(
            f"image folder {root.name!r} holds {len(class_dirs)} classes; the limit is "
            f"{limits.max_classes} (max_classes)"
        )
    files: list[Path] = []
    labels: list[int] = []
    for index, class_dir in enumerate(class_dirs):
        resolve_data_path(class_dir, allowed_roots)
        members = sorted(
            entry
            for entry in class_dir.iterdir()
            if entry.suffix.lower() in IMAGE_EXTENSIONS and not entry.name.startswith(".")
        )
        if not members:
            raise DatasetError(
                f"class folder {class_dir.name!r} holds no images; expected files with one of "
                f"the suffixes {', '.join(sorted(IMAGE_EXTENSIONS))}"
            )
        files.extend(resolve_data_path(member, allowed_roots) for member in members)
        labels.extend([index] * len(members))
        limits.check_examples(f"image folder {root.name!r}", len(files))
    return files, labels, [d.name for d in class_dirs]


def _read_image(file: Path, image_size: int, limits: DataLimits) -> np.ndarray:
    """One image as ``(image_size, image_size, 3)`` uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    if not file.is_file():
        raise DatasetError(f"image {file.name!r} is not a regular file")
    limits.check_file_bytes(f"image {file.name!r}", file.stat().st_size)
    try:
        with Image.open(file) as img:
            width, height = img.size  # from the header; nothing decoded yet
            if width * height > limits.max_source_pixels:
                raise DataLimitError(
                    f"image {file.name!r} is {width}x{height} pixels; the limit is "
                    f"{limits.max_source_pixels} pixels (max_source_pixels)"
                )
            rgb = img.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"image {file.name!r} cannot be read: {exc}") from exc


def _given_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mean, dtype=np.float32).reshape(-1)
    sigma = np.asarray(std, dtype=np.float32).reshape(-1)
    if mu.shape != (3,) or sigma.shape != (3,) or not (sigma > 0).all():
        raise DatasetError(
            f"mean and std must be 3 values (R, G, B) with std > 0, got {list(mean)}, {list(std)}"
        )
    return mu, sigma
