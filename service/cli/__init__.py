"""``rankopt`` subcommands of the REST service: run it, administer it, and use it as a client.

``register(subparsers)`` adds them to the ``rankopt`` parser built by ``worker.cli`` (the one
console script); see :mod:`service.cli.commands`. Nothing here imports torch, and
``service.api`` is imported only when ``serve`` runs.
"""

from __future__ import annotations

from service.cli.commands import make_client, register
from service.cli.usage import UsageError

__all__ = ["UsageError", "make_client", "register"]
