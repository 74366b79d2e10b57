"""CIFAR-style networks (input 3x32x32): VGG with batch norm, and He et al.'s ResNet-20."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from worker.zoo._registry import register_model
from worker.zoo._validation import check_positive_int

CIFAR_INPUT = (3, 32, 32)

# Output channels of each 3x3 conv; "M" is a 2x2 max pool. Five pools take 32x32 to 1x1.
_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _init_convs(model: nn.Module) -> None:
    """He (Kaiming) normal init for convolutions, as in the ResNet paper."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


class VGG(nn.Module):
    """CIFAR-style VGG with batch norm, for 3x32x32 input.

    ``features``: conv3x3 (pad 1) + BatchNorm + ReLU stacks separated by 2x2 max pools, down
    to 512x1x1. ``classifier``: Linear 512→512, ReLU, Dropout, Linear 512→``num_classes``.
    """

    def __init__(
        self, config: Sequence[int | str], *, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = int(item)
                layers += [
                    nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(),
                ]
                channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(channels, 512),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(512, num_classes),
        )
        _init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 512, 1, 1) for 32x32 input
        x = torch.flatten(x, 1)  # (N, 512)
        return self.classifier(x)


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and a residual connection.

    ``shortcut`` is the identity when the shape is kept, else a strided 1x1 conv + BatchNorm
    (option B of He et al.).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth 6n+2) for 3x32x32 input.

    ``conv1``/``bn1``: 3x3 conv to 16 channels; ``layer1``..``layer3``: ``blocks[i]``
    :class:`BasicBlock` each at 16, 32, 64 channels (32x32, 16x16, 8x8); then global average
    pool and ``fc``: Linear 64→``num_classes``.
    """

    def __init__(
        self, blocks: Sequence[int] = (3, 3, 3), *, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, blocks[0], stride=1)
        self.layer2 = self._stage(16, 32, blocks[1], stride=2)
        self.layer3 = self._stage(32, 64, blocks[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _init_convs(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, count: int, stride: int) -> nn.Sequential:
        first = BasicBlock(in_planes, planes, stride)
        return nn.Sequential(first, *(BasicBlock(planes, planes) for _ in range(count - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (N, 16, 32, 32)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64, 8, 8)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 64)
        return self.fc(x)


@register_model("rankopt:vgg11_bn", input_shape=CIFAR_INPUT)
def vgg11_bn(*, num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-11 with batch norm, CIFAR-style (input 3x32x32)."""
    return VGG(_VGG11, num_classes=num_classes, in_channels=in_channels)


@register_model("rankopt:vgg16_bn", input_shape=CIFAR_INPUT)
def vgg16_bn(*, num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-16 with batch norm, CIFAR-style (input 3x32x32)."""
    return VGG(_VGG16, num_classes=num_classes, in_channels=in_channels)


@register_model("rankopt:resnet20", input_shape=CIFAR_INPUT)
def resnet20(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 of He et al. for CIFAR (input 3x32x32), 1x1-conv shortcuts."""
    return CifarResNet((3, 3, 3), num_classes=num_classes, in_channels=in_channels)
