"""The exceptions tensorops raises. Each subclasses a builtin so callers may catch either."""

from __future__ import annotations


class TensorOpsError(Exception):
    """Base class of every error raised on purpose by tensorops."""


class RankError(TensorOpsError, ValueError):
    """A rank is out of range for the tensor or layer it is applied to."""


class NotCompressibleError(TensorOpsError, ValueError):
    """A layer cannot be decomposed by the requested method; the message says why."""


class PlanError(TensorOpsError, ValueError):
    """A plan names an unknown layer or method, or cannot be parsed."""


class CheckpointError(TensorOpsError, ValueError):
    """A compressed checkpoint is missing, malformed, tampered with or cannot be rebuilt."""
