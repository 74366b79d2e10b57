"""Decomposition methods and their registry."""

from tensorops.methods._base import BuildContext, DecompositionMethod
from tensorops.methods._builtin import CPMethod, SVDMethod, Tucker2Method
from tensorops.methods._registry import (
    KEEP,
    applicable_methods,
    get_method,
    list_methods,
    refusal_reason,
    register_method,
)

register_method(Tucker2Method())
register_method(CPMethod())
register_method(SVDMethod())

__all__ = [
    "KEEP",
    "BuildContext",
    "CPMethod",
    "DecompositionMethod",
    "SVDMethod",
    "Tucker2Method",
    "applicable_methods",
    "get_method",
    "list_methods",
    "refusal_reason",
    "register_method",
]
