"""Image folders in torchvision's ``ImageFolder`` layout, under an operator-allowed data root.

Two layouts are understood:

* flat: ``root/<class name>/<image>``; validation (``val_fraction`` of the whole, default 0.2)
  and test (``test_fraction`` of the whole, default 0.2) are carved out by a seeded stratified
  split (:func:`~worker.data._split.three_way_split`);
* split trees: ``root/train/<class>/<image>`` plus optional ``root/val/...`` and
  ``root/test/...`` in the same layout. Without ``val/``, validation is carved out of
  ``train/`` (seeded, stratified); without ``test/`` there is no test split (``test_note``
  says so). ``val/`` and ``test/`` may only hold classes that ``train/`` has.

Images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``, ``.webp``, ``.ppm``, ``.tif``,
``.tiff``; hidden entries skipped) are listed up front and decoded one at a time when a batch
asks for them, so memory does not grow with the number of images. Classes are the sub-folder
names of ``train/`` (or of the root) in sorted order, as ``ImageFolder`` numbers them.

Preprocessing (``preprocess``, see :mod:`worker.data._transforms`): ``"resize"`` converts to RGB
(or to grayscale, see below), resizes to ``image_size`` x ``image_size`` (bilinear), scales to
[0, 1] and normalises per channel with the given ``mean``/``std`` or the statistics of the
training split (measured on at most :data:`STATS_SAMPLES` training images, a seeded subset
beyond that); ``"imagenet"`` is the preset of torchvision's pretrained models (resize 256,
centre crop 224, ImageNet mean/std), always RGB.

Channels (``"resize"``): a folder whose sampled training images (the same seeded subset as the
statistics) are all grayscale (PIL modes ``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``) gives
one-channel ``(1, H, W)`` examples, so 28x28 grayscale PNGs feed a 1x28x28 model such as
LeNet-5; any colour image in the sample makes the folder RGB, every grayscale image then
repeated over three channels. Given ``mean``/``std`` fix the channels by their length (1 or 3).

Limits: the number of image files (``max_examples``), the bytes of each file
(``max_file_bytes``, checked when listing) and its pixels (``max_source_pixels``, checked from
the header before decoding); not the total decoded size, which is never held at once.

Every class folder and image is resolved and must stay inside the allowed roots, so a symlink
inside the tree cannot pull in files from elsewhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from worker.data._bundle import DataBundle, DataSplits
from worker.data._datasets import FolderDataset
from worker.data._errors import DataLimitError, DatasetError, SplitError
from worker.data._limits import DEFAULT_LIMITS, DataLimits
from worker.data._paths import resolve_data_path
from worker.data._split import (
    cap_index,
    check_split_args,
    resolve_split_seed,
    stratified_split,
    three_way_split,
)
from worker.data._transforms import (
    IMAGENET_CROP,
    IMAGENET_MEAN,
    IMAGENET_RESIZE,
    IMAGENET_STD,
    check_image_size,
    check_preprocess,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["IMAGE_EXTENSIONS", "STATS_SAMPLES", "load_image_folder", "open_image_folder"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
)
STATS_SAMPLES = 2_000
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
FOLDER_VAL_FRACTION = 0.2
FOLDER_TEST_FRACTION = 0.2
_SPLIT_DIRS = ("train", "val", "test")


class ImageDecoder:
    """Path -> normalised float32 ``(C, H, W)``: one image read, checked and preprocessed.

    ``C`` is ``channels``: 3 (RGB) or 1 (grayscale); ``mean`` and ``std`` have one value each.

    A plain picklable object, so ``DataLoader`` workers can decode too.
    """

    def __init__(
        self,
        *,
        image_size: int,
        preprocess: str,
        mean: Sequence[float],
        std: Sequence[float],
        limits: DataLimits,
        channels: int = 3,
    ) -> None:
        self.image_size = image_size
        self.preprocess = preprocess
        self.channels = channels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.limits = limits

    @property
    def shape(self) -> tuple[int, int, int]:
        side = IMAGENET_CROP if self.preprocess == "imagenet" else self.image_size
        return self.channels, side, side

    def pixels(self, file: Path) -> torch.Tensor:
        """The image as ``(C, H, W)`` float32 in [0, 1], resized/cropped, not normalised."""
        from PIL import Image

        with _open_image(file, self.limits) as img:
            try:
                rgb = img.convert("L" if self.channels == 1 else "RGB")
                if self.preprocess == "imagenet":
                    rgb = _resize_shorter(rgb, IMAGENET_RESIZE)
                    rgb = _centre_crop(rgb, IMAGENET_CROP)
                else:
                    size = (self.image_size, self.image_size)
                    rgb = rgb.resize(size, Image.Resampling.BILINEAR)
                array = np.atleast_3d(np.asarray(rgb, dtype=np.uint8))  # (H, W, C)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise DatasetError(f"image {file.name!r} cannot be read: {exc}") from exc
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0

    def __call__(self, file: Path) -> torch.Tensor:
        return (self.pixels(file) - self.mean) / self.std


@contextmanager
def _open_image(file: Path, limits: DataLimits) -> Iterator[PILImage]:
    """``file`` opened (its header read, nothing decoded yet) and its pixel count checked."""
    from PIL import Image

    try:
        img = Image.open(file)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"image {file.name!r} cannot be read: {exc}") from exc
    with img:
        width, height = img.size
        if width * height > limits.max_source_pixels:
            raise DataLimitError(
                f"image {file.name!r} is {width}x{height} pixels; the limit is "
                f"{limits.max_source_pixels} pixels (max_source_pixels)"
            )
        yield img


def _resize_shorter(img: PILImage, side: int) -> PILImage:
    from PIL import Image

    width, height = img.size
    scale = side / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return img.resize(size, Image.Resampling.BILINEAR)


def _centre_crop(img: PILImage, side: int) -> PILImage:
    width, height = img.size
    left, top = max(0, (width - side) // 2), max(0, (height - side) // 2)
    return img.crop((left, top, left + side, top + side))


def open_image_folder(
    path: str | os.PathLike[str],
    *,
    allowed_roots: Sequence[Path],
    image_size: int = 32,
    split_seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = FOLDER_TEST_FRACTION,
    limits: DataLimits = DEFAULT_LIMITS,
    max_train: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    preprocess: str = "resize",
) -> DataSplits:
    """An ``ImageFolder``-style tree under one of ``allowed_roots`` as streamed :class:`DataSplits`.

    Raises:
        DataPathError: the folder, a class folder or an image lies outside the allowed roots.
        DatasetError: fewer than two classes, an empty class, an unreadable image.
        SplitError: an empty ``val/`` or ``test/`` tree, or a class there that ``train/`` lacks.
        DataLimitError: too many images, an image file or image too large, ``image_size`` above
            ``limits.max_image_side``.
    """
    val = FOLDER_VAL_FRACTION if val_fraction is None else val_fraction
    check_split_args(
        seed=split_seed, val_fraction=val, max_train=max_train, test_fraction=test_fraction
    )
    check_preprocess(preprocess)
    check_image_size(image_size)
    limits.check_image_side("the requested", image_size, image_size)
    if (mean is None) != (std is None):
        raise DatasetError("give both mean and std, or neither")
    root = resolve_data_path(path, allowed_roots)
    if not root.is_dir():
        raise DatasetError(f"image folder {str(path)!r} is not a directory")
    lister = _Lister(root, allowed_roots, limits)
    if (root / "train").is_dir() and all(d.name in _SPLIT_DIRS for d in _subdirs(root)):
        parts, classes, note = _tree_parts(lister, root, split_seed, val)
    else:
        parts, classes, note = _flat_parts(lister, root, split_seed, val, test_fraction)
    files, labels = parts["train"]
    keep = cap_index(len(labels), max_train=max_train, seed=split_seed)
    if keep is not None:
        files, labels = [files[i] for i in keep], labels[keep]
        parts["train"] = (files, labels)
    mu: tuple[float, ...]
    sigma: tuple[float, ...]
    if preprocess == "imagenet":
        mu, sigma = IMAGENET_MEAN, IMAGENET_STD
    elif mean is None or std is None:
        mu, sigma = _train_stats(files, image_size, limits, split_seed)
    else:
        mu, sigma = _given_stats(mean, std)
    decoder = ImageDecoder(
        image_size=image_size,
        preprocess=preprocess,
        mean=mu,
        std=sigma,
        limits=limits,
        channels=len(mu),
    )

    def dataset(split: str) -> FolderDataset:
        split_files, split_labels = parts[split]
        return FolderDataset(
            split_files, split_labels, decode=decoder, classes=classes, shape=decoder.shape
        )

    splits = DataSplits(
        name=f"folder:{root.name}",
        train=dataset("train"),
        val=dataset("val"),
        test=dataset("test") if "test" in parts else None,
        num_classes=len(classes),
        split_seed=split_seed,
        test_note=note,
    )
    logger.info("opened image folder %s: %d classes, %s", root.name, len(classes), splits.sizes())
    return splits


def load_image_folder(
    path: str | os.PathLike[str],
    *,
    allowed_roots: Sequence[Path],
    image_size: int = 32,
    split_seed: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = FOLDER_TEST_FRACTION,
    limits: DataLimits = DEFAULT_LIMITS,
    max_train: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    preprocess: str = "resize",
    seed: int | None = None,
) -> DataBundle:
    """:func:`open_image_folder` decoded into a :class:`DataBundle` (memory grows with the data).

    ``seed`` is the old name of ``split_seed``.
    """
    return open_image_folder(
        path,
        allowed_roots=allowed_roots,
        image_size=image_size,
        split_seed=resolve_split_seed(split_seed, seed),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        limits=limits,
        max_train=max_train,
        mean=mean,
        std=std,
        preprocess=preprocess,
    ).to_bundle()


_Part = tuple[list[Path], np.ndarray]


def _flat_parts(
    lister: _Lister, root: Path, seed: int, val_fraction: float, test_fraction: float
) -> tuple[dict[str, _Part], list[str], str]:
    classes = lister.classes(root)
    files, labels = lister.images(root, classes, required=True)
    train_idx, val_idx, test_idx = three_way_split(
        labels, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction
    )
    parts = {"train": _pick(files, labels, train_idx), "val": _pick(files, labels, val_idx)}
    if test_idx is None:
        note = f"a flat folder and test_fraction={test_fraction:g}: no test split carved out"
    else:
        parts["test"] = _pick(files, labels, test_idx)
        note = f"{test_fraction:g} of the folder carved out (seeded, stratified)"
    return parts, classes, note


def _tree_parts(
    lister: _Lister, root: Path, seed: int, val_fraction: float
) -> tuple[dict[str, _Part], list[str], str]:
    train_root = resolve_data_path(root / "train", lister.allowed_roots)
    classes = lister.classes(train_root)
    files, labels = lister.images(train_root, classes, required=True)
    parts: dict[str, _Part] = {}
    if (root / "val").is_dir():
        parts["train"] = (files, labels)
        parts["val"] = lister.images(lister.sub_tree(root, "val", classes), classes)
    else:
        train_idx, val_idx = stratified_split(labels, seed=seed, val_fraction=val_fraction)
        parts["train"] = _pick(files, labels, train_idx)
        parts["val"] = _pick(files, labels, val_idx)
    if (root / "test").is_dir():
        parts["test"] = lister.images(lister.sub_tree(root, "test", classes), classes)
        note = "the folder's test/ tree"
    else:
        note = f"folder {root.name!r} has train/ but no test/ tree: no held-out test split"
    return parts, classes, note


def _pick(files: list[Path], labels: np.ndarray, idx: np.ndarray) -> _Part:
    return [files[i] for i in idx], labels[idx]


def _subdirs(folder: Path) -> list[Path]:
    return sorted(e for e in folder.iterdir() if e.is_dir() and not e.name.startswith("."))


class _Lister:
    """Lists class folders and images, checking paths and the per-file limits."""

    def __init__(self, root: Path, allowed_roots: Sequence[Path], limits: DataLimits) -> None:
        self.root = root
        self.allowed_roots = allowed_roots
        self.limits = limits
        self.count = 0

    def classes(self, folder: Path) -> list[str]:
        class_dirs = _subdirs(folder)
        if len(class_dirs) < 2:
            raise DatasetError(
                f"image folder {folder.name!r} holds {len(class_dirs)} class folder(s); expected "
                "at least 2 (root/<class name>/<image files>)"
            )
        if len(class_dirs) > self.limits.max_classes:
            raise DataLimitError(
                f"image folder {folder.name!r} holds {len(class_dirs)} classes; the limit is "
                f"{self.limits.max_classes} (max_classes)"
            )
        return [d.name for d in class_dirs]

    def sub_tree(self, root: Path, split: str, classes: list[str]) -> Path:
        """``root/<split>``, checked: only classes ``train/`` has, and at least one image."""
        folder = resolve_data_path(root / split, self.allowed_roots)
        extra = sorted({d.name for d in _subdirs(folder)} - set(classes))
        if extra:
            raise SplitError(
                f"{split}/ holds class folder(s) {', '.join(map(repr, extra))} that train/ "
                f"lacks; train/ has {', '.join(classes)}"
            )
        return folder

    def images(
        self, folder: Path, classes: list[str], *, required: bool = False
    ) -> tuple[list[Path], np.ndarray]:
        """Image files under ``folder/<class>`` and their class indices (from ``classes``)."""
        files: list[Path] = []
        labels: list[int] = []
        for index, name in enumerate(classes):
            class_dir = folder / name
            if not class_dir.is_dir():
                continue
            resolve_data_path(class_dir, self.allowed_roots)
            members = sorted(
                entry
                for entry in class_dir.iterdir()
                if entry.suffix.lower() in IMAGE_EXTENSIONS and not entry.name.startswith(".")
            )
            if not members and required:
                raise DatasetError(
                    f"class folder {class_dir.name!r} holds no images; expected files with one "
                    f"of the suffixes {', '.join(sorted(IMAGE_EXTENSIONS))}"
                )
            for member in members:
                file = resolve_data_path(member, self.allowed_roots)
                if not file.is_file():
                    raise DatasetError(f"image {file.name!r} is not a regular file")
                self.limits.check_file_bytes(f"image {file.name!r}", file.stat().st_size)
                files.append(file)
            labels.extend([index] * len(members))
            self.count += len(members)
            self.limits.check_examples(f"image folder {self.root.name!r}", self.count)
        if not files:
            raise SplitError(
                f"{folder.name}/ holds no images; put images in {folder.name}/<class name>/ or "
                f"remove the empty {folder.name}/ folder"
            )
        return files, np.asarray(labels, dtype=np.int64)


def _train_stats(
    files: list[Path], image_size: int, limits: DataLimits, seed: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (a seeded subset of) the training images, streamed: one
    value each when every image of the subset is grayscale, else three (R, G, B)."""
    picked = cap_index(len(files), max_train=STATS_SAMPLES, seed=seed)
    chosen = files if picked is None else [files[i] for i in picked]
    channels = 1 if all(_is_gray(file, limits) for file in chosen) else 3
    decoder = ImageDecoder(
        image_size=image_size,
        preprocess="resize",
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        limits=limits,
        channels=channels,
    )
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for file in chosen:
        pixels = decoder.pixels(file).double().flatten(1)  # (C, H*W)
        total += pixels.sum(dim=1)
        squares += (pixels * pixels).sum(dim=1)
        count += pixels.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    std[std < 1e-8] = 1.0
    return tuple(float(v) for v in mean.float()), tuple(float(v) for v in std.float())


def _is_gray(file: Path, limits: DataLimits) -> bool:
    """Whether ``file`` is a grayscale image (from its header)."""
    with _open_image(file, limits) as img:
        return img.mode in _GRAY_MODES


def _given_stats(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mu = np.asarray(mean, dtype=np.float32).reshape(-1)
    sigma = np.asarray(std, dtype=np.float32).reshape(-1)
    if mu.shape != sigma.shape or mu.shape not in ((1,), (3,)) or not (sigma > 0).all():
        raise DatasetError(
            "mean and std must be 3 values (R, G, B), or 1 for grayscale, with std > 0, got "
            f"{list(mean)}, {list(std)}"
        )
    return tuple(float(v) for v in mu), tuple(float(v) for v in sigma)
