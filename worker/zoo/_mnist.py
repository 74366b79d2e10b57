"""MNIST-style networks (input 1x28x28): LeNet-5, the LeNet-300-100-like MLP 500-300 and a
small VGG-style net."""

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


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class MiniVGG(nn.Module):
    """A VGG-style net small enough to train on a CPU in seconds per epoch, for 1x28x28 input.

    ``features``: 3x3 conv-BN-ReLU blocks 16, 16, max pool (14x14), 32, 32, max pool (7x7),
    64, 64; global average pool; ``classifier``: Linear 64→``num_classes``. Most parameters
    and MACs sit in 3x3 convs, so it exercises Tucker-2 and CP rather than SVD.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 16),
            *_conv_bn_relu(16, 16),
            nn.MaxPool2d(2),
            *_conv_bn_relu(16, 32),
            *_conv_bn_relu(32, 32),
            nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64),
            *_conv_bn_relu(64, 64),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 64, 1, 1)
        return self.classifier(torch.flatten(x, 1))


@register_model("rankopt:lenet5", input_shape=MNIST_INPUT)
def lenet5(*, num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    """LeNet-5 (input 1x28x28)."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels)


@register_model("rankopt:lenet500_300", input_shape=MNIST_INPUT)
def lenet500_300(*, num_classes: int = 10, in_channels: int = 1) -> LeNet500300:
    """MLP 784-500-300-classes (input 1x28x28)."""
    return LeNet500300(num_classes=num_classes, in_channels=in_channels)


@register_model("rankopt:minivgg", input_shape=MNIST_INPUT)
def minivgg(*, num_classes: int = 10, in_channels: int = 1) -> MiniVGG:
    """VGG-style 6-conv net with batch norm (input 1x28x28)."""
    return MiniVGG(num_classes=num_classes, in_channels=in_channels)
