"""Static safety check of the pickle inside a PyTorch zip checkpoint, without unpickling it.

``torch.save(model.state_dict(), path)`` writes a zip archive whose ``<name>/data.pkl`` names
only a handful of globals: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``
(``_rebuild_parameter`` for saved parameters) and the typed storages (``torch.FloatStorage``
...). :func:`scan_pickle` walks the opcodes with :func:`pickletools.genops`, which parses and
never executes, and refuses any other global a ``GLOBAL``, ``STACK_GLOBAL`` or ``INST`` opcode
would import, any extension-registry opcode (``EXT1/2/4``, another way to name a global), and any
``STACK_GLOBAL`` whose names it cannot follow. Since a pickle can only call what it imported,
``REDUCE``/``NEWOBJ``/``BUILD`` can then reach nothing but the allowed callables.

The worker still reads the file with ``torch.load(weights_only=True)``: this check runs in the
API (which has no torch) so that an unsafe upload is refused at once with a clear answer.
"""

from __future__ import annotations

import pickletools
import re
import zipfile
from pathlib import Path

__all__ = [
    "ALLOWED_GLOBALS",
    "MAX_PICKLE_BYTES",
    "NotTorchZip",
    "UnsafePickle",
    "check_torch_zip",
    "scan_pickle",
]

_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")

#: ``(module, name)`` pairs a state_dict checkpoint may import.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        *(("torch", f"{kind}Storage") for kind in _STORAGES),
    }
)
#: Largest ``data.pkl`` read (the tensors live in separate archive members).
MAX_PICKLE_BYTES = 64 * 1024 * 1024

_STRING_OPS = frozenset({"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_EXT_OPS = frozenset({"EXT1", "EXT2", "EXT4"})
_DATA_PKL = re.compile(r"^[^/]+/data\.pkl$")


class UnsafePickle(ValueError):
    """The pickle would import something outside :data:`ALLOWED_GLOBALS`."""


class NotTorchZip(ValueError):
    """The file is not a PyTorch zip checkpoint (or is damaged)."""


def _check_global(module: str, name: str) -> None:
    if (module, name) not in ALLOWED_GLOBALS:
        raise UnsafePickle(
            f"the checkpoint's pickle refers to {module}.{name}, which a plain state_dict never "
            "does; only tensors (saved with torch.save(model.state_dict(), path)) are accepted"
        )


def scan_pickle(data: bytes) -> set[tuple[str, str]]:
    """Return the globals ``data`` imports, all allowed, or raise.

    Raises:
        UnsafePickle: a global outside the allow-list, an extension-registry opcode, or a
            ``STACK_GLOBAL`` whose module and name are not plain strings just pushed.
        ValueError: ``data`` is not a complete pickle.
    """
    seen: set[tuple[str, str]] = set()
    memo: dict[int, str | None] = {}
    recent: list[str | None] = []  # what the last two stack pushes were (None: not a string)
    for opcode, arg, _position in pickletools.genops(data):
        name = opcode.name
        if name == "MEMOIZE" or name in _PUT_OPS:
            index = len(memo) if name == "MEMOIZE" else int(arg)  # type: ignore[arg-type]
            memo[index] = recent[-1] if recent else None
            continue
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            _check_global(module, attr)
            seen.add((module, attr))
        elif name == "STACK_GLOBAL":
            module_name = recent[-2] if len(recent) >= 2 else None
            attr_name = recent[-1] if recent else None
            if module_name is None or attr_name is None:
                raise UnsafePickle(
                    "the checkpoint's pickle builds a global from computed names; refused"
                )
            _check_global(module_name, attr_name)
            seen.add((module_name, attr_name))
        elif name in _EXT_OPS:
            raise UnsafePickle(
                f"the checkpoint's pickle uses the extension registry ({name}); refused"
            )
        if name in _STRING_OPS:
            recent.append(str(arg))
        elif name in _GET_OPS:
            recent.append(memo.get(int(arg)))  # type: ignore[arg-type]
        else:
            recent.append(None)
        del recent[:-2]
    return seen


def _check_member_names(archive: zipfile.ZipFile, folder: str) -> None:
    """Refuse entries outside the checkpoint's one top folder (``../x``, ``/x``, ``C:x``,
    ``a\\..\\x``): torch.save never writes them, and torch.load refuses them too."""
    for info in archive.infolist():
        parts = info.filename.split("/")
        if (
            len(parts) < 2
            or parts[0] != folder
            or folder in (".", "..")
            or "\\" in info.filename
            or any(part in ("", ".", "..") for part in parts[1:-1])
            or parts[-1] in (".", "..")
        ):
            raise NotTorchZip(
                f"the zip archive has an entry {info.filename[:200]!r} outside its "
                f"'{folder}/' folder (a path such as '../x' or '/x'); torch.save never "
                "writes one, so the file is refused"
            )


def check_torch_zip(path: Path) -> set[tuple[str, str]]:
    """Check that ``path`` is a torch zip checkpoint whose pickle imports only allowed globals.

    Returns the globals it imports.

    Raises:
        NotTorchZip: not a zip archive with exactly one ``<name>/data.pkl``, an entry outside
            its ``<name>/`` folder, or damaged.
        UnsafePickle: see :func:`scan_pickle`.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if _DATA_PKL.match(info.filename)]
            if len(members) != 1:
                raise NotTorchZip(
                    "the zip archive has no '<name>/data.pkl' (or several); it is not a "
                    "checkpoint written by torch.save"
                )
            member = members[0]
            _check_member_names(archive, member.filename.partition("/")[0])
            if member.file_size > MAX_PICKLE_BYTES:
                raise NotTorchZip(
                    f"the checkpoint's data.pkl is {member.file_size} bytes; a state_dict's is "
                    f"far below {MAX_PICKLE_BYTES}"
                )
            with archive.open(member) as handle:
                data = handle.read(MAX_PICKLE_BYTES + 1)
    except NotTorchZip:
        raise
    except NotImplementedError as exc:  # an unsupported compression method
        raise NotTorchZip(f"the checkpoint's zip archive cannot be read: {exc}") from None
    except Exception as exc:  # untrusted bytes: BadZipFile, bad UTF-8 names, encryption, ...
        raise NotTorchZip(
            f"the checkpoint is not a readable zip archive: {str(exc)[:200]}"
        ) from None
    try:
        return scan_pickle(data)
    except UnsafePickle:
        raise
    except Exception as exc:  # untrusted bytes: any parse failure means "damaged"
        raise NotTorchZip(f"the checkpoint's data.pkl is not a valid pickle: {exc}") from None
