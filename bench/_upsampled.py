"""mnist5k made to look like CIFAR-10 input: 3x32x32, for exercising CIFAR pipelines without CIFAR.

The 5,000 MNIST digits of :func:`worker.data.load_mnist5k` (1x28x28, normalised with the MNIST
constants mean 0.1307, std 0.3081) are resized to 32x32 by bilinear interpolation
(``align_corners=False``, no antialiasing) and the single channel is copied into three.
Bilinear weights sum to one, so resizing commutes with the affine normalisation: the result is
exactly the 32x32 image normalised with the same constants, in each of the three channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.data import DataBundle, load_mnist5k

NAME = "mnist5k-upsampled-3x32x32"
SIZE = 32
CHANNELS = 3
NORMALISATION = "MNIST mean 0.1307, std 0.3081 on [0, 1] pixels, the same in all three channels"


def upsample_images(x: torch.Tensor, *, size: int = SIZE, channels: int = CHANNELS) -> torch.Tensor:
    """(N, 1, H, W) float images -> (N, ``channels``, ``size``, ``size``), bilinear resize."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected (N, 1, H, W) images, got shape {tuple(x.shape)}")
    resized = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)
    return resized.expand(-1, channels, -1, -1).contiguous()  # (N, channels, size, size)


def upsample_bundle(data: DataBundle, *, size: int = SIZE, channels: int = CHANNELS) -> DataBundle:
    """``data`` with both splits passed through :func:`upsample_images`, renamed."""
    return DataBundle(
        name=NAME,
        x_train=upsample_images(data.x_train, size=size, channels=channels),
        y_train=data.y_train,
        x_val=upsample_images(data.x_val, size=size, channels=channels),
        y_val=data.y_val,
        num_classes=data.num_classes,
    )


def load_mnist5k_upsampled(*, seed: int = 0, max_train: int | None = None) -> DataBundle:
    """mnist5k (4,000 train / 1,000 val, split by ``seed``) as 3x32x32 images."""
    return upsample_bundle(load_mnist5k(seed=seed, max_train=max_train))
