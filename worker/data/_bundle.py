"""The in-memory dataset container every data source produces and training consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DataBundle:
    """Train and validation splits held as tensors.

    ``x_*`` are float32 examples, already normalised: images ``(N, C, H, W)``, sequences
    ``(N, C, L)`` or feature vectors ``(N, F)``; ``y_*`` are int64 class
    labels in ``[0, num_classes)``. ``name`` says where the data came from (for reports).
    """

    name: str
    x_train: torch.Tensor  # (N_train, C, H, W), (N_train, C, L) or (N_train, F) float32
    y_train: torch.Tensor  # (N_train,) int64
    x_val: torch.Tensor  # like x_train
    y_val: torch.Tensor  # (N_val,) int64
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example: (C, H, W), (C, L) or (F,); its first entry is the channels
        (or features) a zoo model is built with."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A batch of validation examples, for tracing a model."""
        return self.x_val[:batch].clone()
