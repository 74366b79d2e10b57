"""Factorised layers built from dense ``nn.Conv2d`` and ``nn.Linear`` layers."""

from tensorops.layers._cp_conv import CPConv2d
from tensorops.layers._geometry import ConvGeometry
from tensorops.layers._low_rank import LowRankConv2d, LowRankLinear
from tensorops.layers._tucker2_conv import Tucker2Conv2d
from tensorops.layers._validation import conv_refusal

__all__ = [
    "CPConv2d",
    "ConvGeometry",
    "LowRankConv2d",
    "LowRankLinear",
    "Tucker2Conv2d",
    "conv_refusal",
]
