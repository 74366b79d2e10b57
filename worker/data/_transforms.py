"""Per-example transforms: train-time augmentation and the evaluation presets for folders.

Augmentation (``augment``) works on one normalised ``(C, H, W)`` float32 image and keeps its
shape:

* ``"none"``: no transform;
* ``"crop-flip"``: zero-pad 4 pixels on each side, crop a random ``H x W`` window, flip
  horizontally with probability 0.5 (the usual CIFAR recipe);
* ``"imagenet"``: ``RandomResizedCrop`` to ``H x W`` (scale 0.08..1, aspect 3/4..4/3), then the
  same random horizontal flip.

Random draws come from torch's global RNG, which the training loop seeds (and a ``DataLoader``
seeds per worker from its seeded generator): the same seed gives the same batches.

Evaluation preprocessing of image folders (``preprocess``):

* ``"resize"``: resize to ``image_size x image_size`` (bilinear), scale to [0, 1], normalise
  with the training split's per-channel statistics (or given ``mean``/``std``);
* ``"imagenet"``: the preset of torchvision's pretrained models: resize the shorter side to 256,
  centre-crop 224 x 224, scale to [0, 1], normalise with the ImageNet mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from worker.data._datasets import Transform
from worker.data._errors import DatasetError

__all__ = [
    "AUGMENTATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PREPROCESS_PRESETS",
    "Augment",
    "Preprocess",
    "check_augment",
    "check_image_size",
    "check_preprocess",
    "imagenet_eval_transform",
    "train_transform",
]

Augment = Literal["none", "crop-flip", "imagenet"]
AUGMENTATIONS: tuple[str, ...] = ("none", "crop-flip", "imagenet")
Preprocess = Literal["resize", "imagenet"]
PREPROCESS_PRESETS: tuple[str, ...] = ("resize", "imagenet")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_RESIZE = 256
IMAGENET_CROP = 224
CROP_PADDING = 4


def check_augment(augment: str) -> None:
    """Raise :class:`DatasetError` unless ``augment`` is one of :data:`AUGMENTATIONS`."""
    if augment not in AUGMENTATIONS:
        raise DatasetError(f"augment must be one of {', '.join(AUGMENTATIONS)}; got {augment!r}")


def check_preprocess(preprocess: str) -> None:
    """Raise :class:`DatasetError` unless ``preprocess`` is one of :data:`PREPROCESS_PRESETS`."""
    if preprocess not in PREPROCESS_PRESETS:
        raise DatasetError(
            f"preprocess must be one of {', '.join(PREPROCESS_PRESETS)}; got {preprocess!r}"
        )


def check_image_size(image_size: int) -> None:
    """Raise :class:`DatasetError` unless ``image_size`` is a positive int."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DatasetError(f"image_size must be a positive integer, got {image_size!r}")


def train_transform(augment: str, shape: Sequence[int]) -> Transform | None:
    """The augmentation ``augment`` for images of ``shape`` ``(C, H, W)``; ``None`` for none."""
    check_augment(augment)
    if augment == "none":
        return None
    from torchvision.transforms import v2

    size = (int(shape[-2]), int(shape[-1]))
    if augment == "crop-flip":
        steps: list[torch.nn.Module] = [v2.RandomCrop(size, padding=CROP_PADDING)]
    else:
        steps = [v2.RandomResizedCrop(size, antialias=True)]
    steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def imagenet_eval_transform() -> Transform:
    """Resize 256 (shorter side), centre-crop 224, ImageNet mean/std; on [0, 1] ``(C, H, W)``."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Resize(IMAGENET_RESIZE, antialias=True),
            v2.CenterCrop(IMAGENET_CROP),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
