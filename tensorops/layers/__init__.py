"""Factorised layers built from dense ``nn.Conv2d`` and ``nn.Linear`` layers."""

from tensorops.layers._btd_conv import BTDConv2d
from tensorops.layers._conv1d import LowRankConv1d, Tucker2Conv1d, conv1d_refusal
from tensorops.layers._cp_conv import CPConv2d
from tensorops.layers._geometry import ConvGeometry
from tensorops.layers._low_rank import LowRankConv2d, LowRankLinear
from tensorops.layers._norm_pruned import NormConv2d, NormLinear, Penalized
from tensorops.layers._ntt_linear import NTTLinear
from tensorops.layers._qcp_linear import QCPLinear
from tensorops.layers._qtt_linear import QTTLinear
from tensorops.layers._tt_conv import TTConv2d
from tensorops.layers._tt_linear import TTLinear, factorize_modes, tt_matrix_forward
from tensorops.layers._tt_tucker_conv import TTTuckerConv2d
from tensorops.layers._tucker2_conv import Tucker2Conv2d
from tensorops.layers._validation import conv_refusal

__all__ = [
    "BTDConv2d",
    "CPConv2d",
    "ConvGeometry",
    "LowRankConv1d",
    "LowRankConv2d",
    "LowRankLinear",
    "NTTLinear",
    "NormConv2d",
    "NormLinear",
    "Penalized",
    "QCPLinear",
    "QTTLinear",
    "TTConv2d",
    "TTLinear",
    "TTTuckerConv2d",
    "Tucker2Conv1d",
    "Tucker2Conv2d",
    "conv1d_refusal",
    "conv_refusal",
    "factorize_modes",
    "tt_matrix_forward",
]
