"""A tiny CNN for scikit-learn's 8x8 digits (input 1x8x8); trains in seconds on a CPU."""

from __future__ import annotations

import torch
from torch import nn

from worker.zoo._registry import register_model
from worker.zoo._validation import check_positive_int

DIGITS_INPUT = (1, 8, 8)


class TinyCNN(nn.Module):
    """Three 3x3 convs for 1x8x8 input.

    ``features``: conv3x3 16ch, ReLU, conv3x3 32ch, ReLU, maxpool 2, conv3x3 32ch, ReLU (all
    pad 1), adaptive average pool to 1x1. ``classifier``: Linear 32→``num_classes``.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 32, 1, 1)
        return self.classifier(torch.flatten(x, 1))


@register_model("rankopt:tinycnn", input_shape=DIGITS_INPUT)
def tinycnn(*, num_classes: int = 10, in_channels: int = 1) -> TinyCNN:
    """Tiny CNN for scikit-learn digits (input 1x8x8)."""
    return TinyCNN(num_classes=num_classes, in_channels=in_channels)
