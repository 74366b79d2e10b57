"""Decompositions of convolution kernels and matrices, computed in float64 without gradients."""

from tensorops.decompositions._cp import (
    CPResult,
    cp_als,
    cp_to_tensor,
    max_cp_rank,
    validate_cp_rank,
)
from tensorops.decompositions._linalg import relative_error
from tensorops.decompositions._svd import SVDResult, truncated_svd, validate_svd_rank
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
    "CPResult",
    "ModeBasis",
    "SVDResult",
    "Tucker2Result",
    "cp_als",
    "cp_to_tensor",
    "max_cp_rank",
    "mode_bases",
    "relative_error",
    "truncated_svd",
    "tucker2",
    "tucker2_to_tensor",
    "unfold",
    "validate_cp_rank",
    "validate_svd_rank",
    "validate_tucker2_ranks",
]
