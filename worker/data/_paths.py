"""Confinement of data paths to the data roots the operator allows."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from service.names import ALLOWED_DATA_ROOTS_ENV
from worker.data._errors import DataPathError

__all__ = ["resolve_data_path"]

logger = logging.getLogger(__name__)


def resolve_data_path(path: str | os.PathLike[str], allowed_roots: Sequence[Path]) -> Path:
    """Resolve ``path`` and return it only if it lies inside one of ``allowed_roots``.

    An absolute path is resolved as it is; a relative path is taken relative to each allowed root
    in turn (so ``"cifar"`` names ``<root>/cifar``). Symlinks and ``..`` are resolved
    (``Path.resolve(strict=True)``) before the check, so neither can lead out of a root. Roots
    that do not exist are skipped.

    Raises:
        DataPathError: no roots are allowed, the path resolves outside every root, or it does
            not exist. A path outside the roots is reported as such whether or not it exists, so
            the error does not reveal what exists elsewhere on the machine.
    """
    roots = _resolved_roots(allowed_roots)
    if not roots:
        raise DataPathError(
            f"data path {str(path)!r} refused: no data roots are allowed on this server "
            f"(the operator sets {ALLOWED_DATA_ROOTS_ENV})"
        )
    raw = Path(path)
    candidates = [raw] if raw.is_absolute() else [root / raw for root in roots]
    for candidate in candidates:
        # Resolve without requiring existence first, so a path pointing outside is refused
        # before anything is said about whether it exists.
        if not _inside_any(_resolve(candidate, path, strict=False), roots):
            raise DataPathError(f"data path {str(path)!r} is outside the allowed data roots")
        try:
            resolved = _resolve(candidate, path, strict=True)
        except FileNotFoundError:
            continue
        if not _inside_any(resolved, roots):  # the tree changed between the two resolutions
            raise DataPathError(f"data path {str(path)!r} is outside the allowed data roots")
        return resolved
    raise DataPathError(
        f"data path {str(path)!r} does not exist under the allowed data roots",
        code="data_path_not_found",
    )


def _resolve(candidate: Path, shown: str | os.PathLike[str], *, strict: bool) -> Path:
    """``candidate.resolve(strict)``; FileNotFoundError passes, other failures are DataPathError."""
    try:
        return candidate.resolve(strict=strict)
    except FileNotFoundError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:  # symlink loop, permissions, NUL byte
        raise DataPathError(f"data path {str(shown)!r} cannot be resolved: {exc}") from exc


def _resolved_roots(allowed_roots: Sequence[Path]) -> list[Path]:
    roots: list[Path] = []
    for root in allowed_roots:
        try:
            roots.append(Path(root).resolve(strict=True))
        except (OSError, RuntimeError):
            logger.warning("allowed data root %s does not exist; skipping it", root)
    return roots


def _inside_any(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)
