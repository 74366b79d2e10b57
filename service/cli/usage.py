"""The error every ``rankopt`` subcommand raises for a problem with what the user asked for.

``worker.cli.main`` prints it as one line and exits 2, as it does the worker's own
``worker.errors.UsageError``; it lives here, torch-free, so that the
service's commands and the worker's share it without ``service`` importing ``worker``.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line."""

    code = "usage_error"  # the same code as the worker's ``worker.errors.UsageError``
