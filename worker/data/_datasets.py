"""Splits as ``torch.utils.data`` datasets: tensors held in memory, or image files read lazily.

Every split of every source is a :class:`LabeledDataset`: indexable ``(image, label)`` pairs
with the labels all known up front (``targets``), an optional per-example ``transform``
(augmentation, see :mod:`worker.data._transforms`) and a stable ``key`` per example that names
where it came from (used to prove splits disjoint).

* :class:`ArrayDataset` holds the images as one tensor, ``float32`` already normalised or
  ``uint8`` scaled and normalised per batch (4x less memory). Fetching a batch is one gather
  (``__getitems__``), so a ``DataLoader`` over it needs no worker processes.
* :class:`FolderDataset` holds file paths and decodes each image when it is asked for, so its
  memory does not grow with the number of images.
"""

from __future__ import annotations

import copy
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ArrayDataset", "FolderDataset", "LabeledDataset", "Transform"]

_D = TypeVar("_D", bound="LabeledDataset")

Transform = Callable[[torch.Tensor], torch.Tensor]
"""A per-example transform of one ``(C, H, W)`` float32 image."""


class LabeledDataset(Dataset[tuple[torch.Tensor, torch.Tensor]], ABC):
    """An image-classification split: ``dataset[i]`` is ``(image (C, H, W) float32, label)``.

    Contract: ``targets`` is the ``(N,)`` int64 label of every example, known without decoding
    anything; ``image(i)`` returns example ``i`` preprocessed but not augmented;
    ``__getitem__`` applies ``transform`` (when set) on top. Subclasses must be picklable, so a
    ``DataLoader`` can hand them to worker processes.
    """

    targets: torch.Tensor
    transform: Transform | None = None
    in_memory: bool = False

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @abstractmethod
    def image(self, index: int) -> torch.Tensor:
        """Example ``index`` as a float32 ``(C, H, W)`` tensor, without ``transform``."""

    @abstractmethod
    def key(self, index: int) -> str:
        """A stable identity of example ``index`` (a file path, or a digest of the pixels)."""

    @abstractmethod
    def select(self, indices: Sequence[int] | np.ndarray) -> LabeledDataset:
        """A dataset of the examples at ``indices``, in that order (same transform)."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.image(int(index))
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[int(index)]

    def with_transform(self: _D, transform: Transform | None) -> _D:
        """A shallow copy whose examples go through ``transform`` (``None``: no transform)."""
        other = copy.copy(self)
        other.transform = transform
        return other

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one example, before any transform."""
        return tuple(int(d) for d in self.image(0).shape)

    def labels(self) -> np.ndarray:
        """``targets`` as a numpy int64 array."""
        return self.targets.numpy()


class ArrayDataset(LabeledDataset):
    """Images held in one ``(N, C, H, W)`` tensor (other shapes, flat features say, are used as
    given).

    ``x`` is either float32, already normalised (used as is), or uint8 images, in which case a batch
    is scaled by 1/255 and normalised with ``mean``/``std`` per channel when it is read.
    ``ids`` (optional, ``(N,)`` int64) number each example within its source, so splits carved
    out of one source can be proved disjoint even where the source holds duplicate images;
    without them an example's key is a digest of its pixels.
    """

    in_memory = True

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
        ids: torch.Tensor | None = None,
    ) -> None:
        if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x must be (N, ...) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        self.x = x
        self.targets = y.to(torch.int64)
        self.transform = transform
        self.ids = ids
        self._scale: tuple[torch.Tensor, torch.Tensor] | None = None
        if x.dtype == torch.uint8 and x.ndim == 4:
            channels = int(x.shape[1])
            mu = torch.tensor(mean if mean is not None else [0.0] * channels)
            sigma = torch.tensor(std if std is not None else [1.0] * channels)
            self._scale = (mu.float().view(1, -1, 1, 1), sigma.float().view(1, -1, 1, 1))

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        """A batch ``(B, C, H, W)`` as normalised float32."""
        if self._scale is None:
            return x
        mu, sigma = self._scale
        return (x.float() / 255.0 - mu) / sigma

    def image(self, index: int) -> torch.Tensor:
        return self._convert(self.x[index : index + 1])[0]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples ``indices`` as one batch ``(B, C, H, W), (B,)``, transform applied."""
        xb = self._convert(self.x[indices])
        if self.transform is not None:
            xb = torch.stack([self.transform(img) for img in xb])
        return xb, self.targets[indices]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # DataLoader's batched fetch: one gather instead of one call per example.
        return self.batch(torch.as_tensor(indices, dtype=torch.int64))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as normalised float32 ``(N, C, H, W)`` (no transform) and the labels."""
        return self._convert(self.x), self.targets

    def key(self, index: int) -> str:
        if self.ids is not None:
            return f"#{int(self.ids[index])}"
        return hashlib.sha1(self.x[index].contiguous().numpy().tobytes()).hexdigest()

    def select(self, indices: Sequence[int] | np.ndarray) -> ArrayDataset:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        other = copy.copy(self)
        other.x = self.x[idx]
        other.targets = self.targets[idx]
        other.ids = None if self.ids is None else self.ids[idx]
        return other

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])


class FolderDataset(LabeledDataset):
    """Image files decoded one at a time by ``decode`` (path -> float32 ``(C, H, W)``)."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int] | np.ndarray,
        *,
        decode: Callable[[Path], torch.Tensor],
        classes: Sequence[str],
        shape: tuple[int, int, int] | None = None,
        transform: Transform | None = None,
    ) -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files = list(files)
        self.targets = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.decode = decode
        self.classes = list(classes)
        self.shape = shape
        self.transform = transform

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape if self.shape is not None else super().sample_shape

    def image(self, index: int) -> torch.Tensor:
        return self.decode(self.files[index])

    def key(self, index: int) -> str:
        return str(self.files[index])

    def select(self, indices: Sequence[int] | np.ndarray) -> FolderDataset:
        other = copy.copy(self)
        picked = [int(i) for i in np.asarray(indices, dtype=np.int64)]
        other.files = [self.files[i] for i in picked]
        other.targets = self.targets[torch.as_tensor(picked, dtype=torch.int64)]
        return other
