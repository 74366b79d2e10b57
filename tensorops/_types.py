"""The value types shared by the inventory, the methods and the surgery.

Kept apart so that :mod:`tensorops.inventory` and :mod:`tensorops.methods` both import them
without importing each other the wrong way round (the methods never import the inventory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tensorops.layers._geometry import Padding

#: The plan choice that leaves a layer dense. It is not a registered method.
KEEP = "keep"


@dataclass(frozen=True)
class Cost:
    """Parameters and multiply-accumulates per example."""

    params: int
    macs: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.macs + other.macs)


@dataclass(frozen=True)
class LayerInfo:
    """One Conv2d, Conv1d or Linear layer as seen in a traced forward pass.

    ``input_size`` and ``output_size`` are the spatial (H, W) sizes; for a Linear they are
    ``(positions, 1)``, positions being how many vectors per example it is applied to (1 for a
    classifier head or an MLP on ``(N, F)`` features). A Conv1d is described as the 2-D
    convolution with a width of 1: ``kernel_size`` ``(k, 1)``, ``stride``/``dilation``
    ``(s, 1)``/``(d, 1)``, ``padding`` ``(p, 0)`` (or its string), sizes ``(L, 1)``, so that
    the 2-D cost formulas hold for it unchanged. ``compressible`` says whether any registered
    method applies; ``reason`` says why not when it is False.
    """

    name: str
    kind: Literal["conv2d", "conv1d", "linear"]
    weight_shape: tuple[int, ...]
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: Padding
    dilation: tuple[int, int]
    groups: int
    has_bias: bool
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    params: int
    macs: int
    compressible: bool
    reason: str | None = None

    @property
    def cost(self) -> Cost:
        return Cost(self.params, self.macs)
