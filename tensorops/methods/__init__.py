"""Decomposition methods and their registry."""

from tensorops.methods._base import BuildContext, DecompositionMethod
from tensorops.methods._builtin import CPMethod, SVDMethod, Tucker2Method
from tensorops.methods._conv_families import BTDMethod, TTConvMethod, TTTuckerMethod
from tensorops.methods._pruning import PruneMethod
from tensorops.methods._registry import (
    KEEP,
    applicable_methods,
    get_method,
    list_methods,
    refusal_reason,
    register_method,
)
from tensorops.methods._tensor_train import NTTMethod, QCPMethod, QTTMethod, TTMethod

register_method(Tucker2Method())
register_method(CPMethod())
register_method(SVDMethod())
register_method(BTDMethod())
register_method(TTConvMethod())
register_method(TTTuckerMethod())
register_method(PruneMethod())
register_method(TTMethod())
register_method(QTTMethod())
register_method(QCPMethod())
register_method(NTTMethod())

__all__ = [
    "KEEP",
    "BTDMethod",
    "BuildContext",
    "CPMethod",
    "DecompositionMethod",
    "NTTMethod",
    "PruneMethod",
    "QCPMethod",
    "QTTMethod",
    "SVDMethod",
    "TTConvMethod",
    "TTMethod",
    "TTTuckerMethod",
    "Tucker2Method",
    "applicable_methods",
    "get_method",
    "list_methods",
    "refusal_reason",
    "register_method",
]
