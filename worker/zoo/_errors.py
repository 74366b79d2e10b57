"""The exceptions the model zoo raises. Each subclasses ``ValueError``: callers may catch either."""

from __future__ import annotations

from worker.errors import WorkerError


class ZooError(WorkerError):
    """Base class of every error raised on purpose by the model zoo."""

    code = "invalid_arch"


class UnknownModelError(ZooError, ValueError):
    """No architecture is registered under the requested name; the message lists close names."""

    code = "unknown_model"


class ModelNotAllowedError(ZooError, ValueError):
    """A ``"package.module:function"`` factory was requested that is not in the allow-list."""

    code = "factory_not_allowed"


class ModelSpecError(ZooError, ValueError):
    """An architecture spec or its keyword arguments are malformed; the message names them."""
