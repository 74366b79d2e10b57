"""A pickle reader that can rebuild numpy arrays and nothing else.

CIFAR-10's batches are Python pickles, and unpickling runs whatever callable the file names.
:class:`RestrictedUnpickler` resolves only the handful of globals numpy's own pickles use to
rebuild arrays, dtypes and scalars; any other global (``os.system``, ``builtins.open``, ``eval``,
other numpy functions, ...) raises :class:`UnsafePickleError` before it can be called.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

import numpy as np

from worker.data._errors import DatasetError, UnsafePickleError

__all__ = ["RestrictedUnpickler", "restricted_load"]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to latin-1: protocol 0-2 pickles spell bytes this way."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"pickle asked for _codecs.encode with codec {encoding!r}")
    return text.encode("latin-1")


# Taken from numpy's own reducers, so the names match whatever numpy version wrote the file
# (numpy 1 pickles say ``numpy.core``, numpy 2 pickles say ``numpy._core``).
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # multiarray._reconstruct
_SCALAR = np.int64(0).__reduce__()[0]  # multiarray.scalar
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numeric._frombuffer (pickle protocol 5)

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` knows only numpy's array-rebuilding globals."""

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed global ``module.name`` or raise :class:`UnsafePickleError`."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"pickle refers to {module}.{name}, which is not allowed; only numpy arrays, "
                "dtypes and plain Python containers may appear in a data pickle"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (no object of ours can be referenced from a data file)."""
        raise UnsafePickleError("pickle uses persistent ids, which are not allowed")


def restricted_load(stream: BinaryIO | bytes, *, what: str = "pickle") -> Any:
    """Unpickle ``stream`` with :class:`RestrictedUnpickler` (``encoding="latin1"``).

    ``latin1`` lets numpy rebuild arrays from Python 2 pickles, as the CIFAR-10 files are.

    Raises:
        UnsafePickleError: the pickle names a global outside the allowed set.
        DatasetError: the data is not a valid pickle.
    """
    fp = io.BytesIO(stream) if isinstance(stream, bytes) else stream
    try:
        return RestrictedUnpickler(fp, encoding="latin1").load()
    except DatasetError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
    ) as exc:
        raise DatasetError(f"{what} is not a valid pickle: {exc}") from exc
