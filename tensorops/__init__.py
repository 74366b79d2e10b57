"""tensorops: tensor decompositions, factorised layers and compressed checkpoints for PyTorch.

Imports torch, tensorly and numpy only; nothing else of rankopt.
"""

from tensorops._types import KEEP, Cost, LayerInfo
from tensorops.checkpoint import load_compressed, read_manifest, save_compressed, weights_digest
from tensorops.decompositions import (
    BTDResult,
    CPResult,
    SVDResult,
    TTResult,
    Tucker2Result,
    btd,
    cp_als,
    mode_bases,
    truncated_svd,
    tt_svd,
    tucker2,
)
from tensorops.evbmf import (
    DEFAULT_RANK_FLOOR,
    EVBMFResult,
    clamp_rank,
    cp_rank_from_tucker2,
    evbmf,
    tucker2_ranks,
)
from tensorops.exceptions import (
    CheckpointError,
    NotCompressibleError,
    PlanError,
    RankError,
    TensorOpsError,
)
from tensorops.export import ExportError, export_onnx, export_torchscript
from tensorops.inventory import inventory, measure_cost
from tensorops.layers import (
    BTDConv2d,
    CPConv2d,
    LowRankConv2d,
    LowRankLinear,
    NormConv2d,
    NormLinear,
    Penalized,
    TTConv2d,
    TTTuckerConv2d,
    Tucker2Conv2d,
)
from tensorops.methods import (
    BuildContext,
    DecompositionMethod,
    applicable_methods,
    get_method,
    list_methods,
    register_method,
)
from tensorops.plan import Choice, Plan
from tensorops.pruning import PrunedLayer, PruneResult, prune_channels
from tensorops.surgery import compress, estimate_cost, validate_plan

__all__ = [
    "DEFAULT_RANK_FLOOR",
    "KEEP",
    "BTDConv2d",
    "BTDResult",
    "BuildContext",
    "CPConv2d",
    "CPResult",
    "CheckpointError",
    "Choice",
    "Cost",
    "DecompositionMethod",
    "EVBMFResult",
    "ExportError",
    "LayerInfo",
    "LowRankConv2d",
    "LowRankLinear",
    "NormConv2d",
    "NormLinear",
    "NotCompressibleError",
    "Penalized",
    "Plan",
    "PlanError",
    "PruneResult",
    "PrunedLayer",
    "RankError",
    "SVDResult",
    "TTConv2d",
    "TTResult",
    "TTTuckerConv2d",
    "TensorOpsError",
    "Tucker2Conv2d",
    "Tucker2Result",
    "applicable_methods",
    "btd",
    "clamp_rank",
    "compress",
    "cp_als",
    "cp_rank_from_tucker2",
    "estimate_cost",
    "evbmf",
    "export_onnx",
    "export_torchscript",
    "get_method",
    "inventory",
    "list_methods",
    "load_compressed",
    "measure_cost",
    "mode_bases",
    "prune_channels",
    "read_manifest",
    "register_method",
    "save_compressed",
    "truncated_svd",
    "tt_svd",
    "tucker2",
    "tucker2_ranks",
    "validate_plan",
    "weights_digest",
]
