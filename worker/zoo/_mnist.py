"""MNIST-style networks (input 1x28x28): LeNet-5 and the LeNet-300-100-like MLP 500-300."""

from __future__ import annotations

import torch
from torch import nn

from worker.zoo._registry import register_model
from worker.zoo._validation import check_positive_int

MNIST_INPUT = (1, 28, 28)


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max pooling, for 1x28x28 input.

    ``features``: conv5x5 6ch (pad 2), ReLU, maxpool 2, conv5x5 16ch, ReLU, maxpool 2.
    ``classifier``: Linear 400→120, ReLU, Linear 120→84, ReLU, Linear 84→``num_classes``.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 16, 5, 5)
        x = torch.flatten(x, 1)  # (N, 400)
        return self.classifier(x)


class LeNet500300(nn.Module):
    """Fully connected net for 1x28x28 input: flatten, Linear 784→500, ReLU, Linear 500→300,
    ReLU, Linear 300→``num_classes``, all in ``classifier``."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * 28 * 28, 500),
            nn.ReLU(),
            nn.Linear(500, 300),
            nn.ReLU(),
            nn.Linear(300, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, 1))  # (N, C*28*28) in


@register_model("rankopt:lenet5", input_shape=MNIST_INPUT)
def lenet5(*, num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    """LeNet-5 (input 1x28x28)."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels)


@register_model("rankopt:lenet500_300", input_shape=MNIST_INPUT)
def lenet500_300(*, num_classes: int = 10, in_channels: int = 1) -> LeNet500300:
    """MLP 784-500-300-classes (input 1x28x28)."""
    return LeNet500300(num_classes=num_classes, in_channels=in_channels)
