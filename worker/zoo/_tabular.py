"""Small nets for tabular data: stand-ins for a drug-design model over molecular descriptors.

``rankopt:tabular_mlp`` reads ``(N, F)`` descriptor vectors (the built-in ``breast-cancer``,
F = 30); ``rankopt:tabular_cnn1d`` reads ``(N, C, L)`` sequences (the built-in
``breast-cancer-seq``: 3 statistics x 10 measurements). Both train in seconds on a CPU. With the
zoo's convention, ``in_channels`` is the number of features (MLP) or channels (CNN).
"""

from __future__ import annotations

import torch
from torch import nn

from worker.zoo._registry import register_model
from worker.zoo._validation import check_positive_int

TABULAR_FEATURES = (30,)
TABULAR_SEQUENCE = (3, 10)


class TabularMLP(nn.Module):
    """An MLP for 30 descriptors: Linear 30→128, ReLU, Linear 128→64, ReLU, Linear 64→classes.

    ``in_channels`` is the number of input features.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 30) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        self.features = nn.Sequential(
            nn.Linear(in_channels, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (N, F) -> (N, classes)


class TabularCNN1d(nn.Module):
    """A 1-D CNN for 3x10 sequences (channels x positions).

    ``features``: Conv1d k3 32ch, ReLU, Conv1d k3 64ch, ReLU, Conv1d k3 64ch, ReLU (all pad 1,
    so the length is kept); ``classifier``: flatten, Linear 64·length→64, ReLU, Linear
    64→classes. Flattening keeps which position a feature came from, since the positions of a
    tabular "sequence" are distinct measurements, not shifts of one another.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, length: int = 10) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_positive_int("length", length)
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv1d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv1d(64, 64, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * length, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (N, C, L) -> (N, 64, L) -> (N, classes)


@register_model("rankopt:tabular_mlp", input_shape=TABULAR_FEATURES)
def tabular_mlp(*, num_classes: int = 10, in_channels: int = 30) -> TabularMLP:
    """MLP for (N, 30) descriptor vectors (the built-in ``breast-cancer``)."""
    return TabularMLP(num_classes=num_classes, in_channels=in_channels)


@register_model("rankopt:tabular_cnn1d", input_shape=TABULAR_SEQUENCE)
def tabular_cnn1d(*, num_classes: int = 10, in_channels: int = 3, length: int = 10) -> TabularCNN1d:
    """1-D CNN for (N, 3, 10) sequences (the built-in ``breast-cancer-seq``)."""
    return TabularCNN1d(num_classes=num_classes, in_channels=in_channels, length=length)
