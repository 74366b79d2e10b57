"""Names that several packages must spell the same way: settings' variables and name patterns.

Define a setting's environment variable or a name pattern here and import it where it is used
(messages, validators, the web form's ``/ui/config``), so no copy can drift. Nothing here
imports anything: the API, the worker and the library may all import it.

The patterns are strings anchored with ``^...$`` that JavaScript's ``RegExp`` reads as Python's
``re`` does; Python code matches them with :meth:`re.Pattern.fullmatch`.
"""

from __future__ import annotations

import re

__all__ = [
    "ALLOWED_DATA_ROOTS_ENV",
    "ALLOWED_FACTORIES_ENV",
    "ARCH_PATTERN",
    "ARCH_RE",
    "ENV_PREFIX",
    "FACTORY_PATTERN",
    "FACTORY_RE",
    "SERVER_DATA_PATTERN",
    "SERVER_DATA_RE",
    "ZOO_ARCH_PATTERN",
    "ZOO_PREFIXES",
]

#: Prefix of every environment variable :class:`service.settings.Settings` reads.
ENV_PREFIX = "RANKOPT_"
#: The allow-list of ``package.module:function`` model factories (``Settings.allowed_factories``).
ALLOWED_FACTORIES_ENV = f"{ENV_PREFIX}ALLOWED_FACTORIES"
#: The folders server-side datasets may be read from (``Settings.allowed_data_roots``).
ALLOWED_DATA_ROOTS_ENV = f"{ENV_PREFIX}ALLOWED_DATA_ROOTS"

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
#: Architectures of the built-in zoo: ``rankopt:<net>``, ``torchvision:<model>``.
ZOO_PREFIXES: tuple[str, ...] = ("rankopt:", "torchvision:")
ZOO_ARCH_PATTERN = r"^(rankopt|torchvision):[A-Za-z0-9_]+$"
#: A model factory ``package.module:function`` (the function may be ``Class.method``).
FACTORY_PATTERN = rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$"
#: What a job's ``arch`` may be: a zoo architecture or a factory.
ARCH_PATTERN = f"{ZOO_ARCH_PATTERN}|{FACTORY_PATTERN}"
#: Server-side datasets, read only under the allowed data roots.
SERVER_DATA_PATTERN = r"^(folder|cifar10):.+$"

FACTORY_RE = re.compile(FACTORY_PATTERN)
ARCH_RE = re.compile(ARCH_PATTERN)
SERVER_DATA_RE = re.compile(SERVER_DATA_PATTERN)
