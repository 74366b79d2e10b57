"""The in-memory dataset container every data source produces and training consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DataBundle:
    """Train and validation splits held as tensors.

    ``x_*`` are float32 images in NCHW layout, already normalised; ``y_*`` are int64 class
    labels in ``[0, num_classes)``. ``name`` says where the data came from (for reports).
    """

    name: str
    x_train: torch.Tensor  # (N_train, C, H, W) float32
    y_train: torch.Tensor  # (N_train,) int64
    x_val: torch.Tensor  # (N_val, C, H, W) float32
    y_val: torch.Tensor  # (N_val,) int64
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one example."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A batch of validation images, for tracing a model."""
        return self.x_val[:batch].clone()
