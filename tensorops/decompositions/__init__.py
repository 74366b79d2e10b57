"""Decompositions of convolution kernels and matrices, computed in float64 without gradients."""

from tensorops.decompositions._btd import (
    BTDResult,
    btd,
    btd_to_tensor,
    max_btd_blocks,
    validate_btd_ranks,
)
from tensorops.decompositions._cp import (
    CPResult,
    cp_als,
    cp_to_tensor,
    max_cp_rank,
    validate_cp_rank,
)
from tensorops.decompositions._cp_nway import CPNResult, cp_als_nway, cp_nway_to_tensor
from tensorops.decompositions._linalg import relative_error
from tensorops.decompositions._qtt import (
    QTTResult,
    dequantise,
    padded_size,
    qtt_matrix_modes,
    qtt_svd,
    quantise,
    quantised_levels,
)
from tensorops.decompositions._svd import SVDResult, truncated_svd, validate_svd_rank
from tensorops.decompositions._tt import (
    TTMatrix,
    TTResult,
    tt_matrix_bond_limits,
    tt_matrix_ranks,
    tt_matrix_svd,
    tt_matrix_to_matrix,
    tt_svd,
    tt_to_tensor,
)
from tensorops.decompositions._tucker2 import (
    ModeBasis,
    Tucker2Result,
    mode_bases,
    tucker2,
    tucker2_to_tensor,
    unfold,
    validate_tucker2_ranks,
)

__all__ = [
    "BTDResult",
    "CPNResult",
    "CPResult",
    "ModeBasis",
    "QTTResult",
    "SVDResult",
    "TTMatrix",
    "TTResult",
    "Tucker2Result",
    "btd",
    "btd_to_tensor",
    "cp_als",
    "cp_als_nway",
    "cp_nway_to_tensor",
    "cp_to_tensor",
    "dequantise",
    "max_btd_blocks",
    "max_cp_rank",
    "mode_bases",
    "padded_size",
    "qtt_matrix_modes",
    "qtt_svd",
    "quantise",
    "quantised_levels",
    "relative_error",
    "truncated_svd",
    "tt_matrix_bond_limits",
    "tt_matrix_ranks",
    "tt_matrix_svd",
    "tt_matrix_to_matrix",
    "tt_svd",
    "tt_to_tensor",
    "tucker2",
    "tucker2_to_tensor",
    "unfold",
    "validate_btd_ranks",
    "validate_cp_rank",
    "validate_svd_rank",
    "validate_tucker2_ranks",
]
