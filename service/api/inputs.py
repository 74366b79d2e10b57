"""Checks of a job's inputs that need neither torch nor unpickling.

* weights: a ``.safetensors`` file whose header agrees with its size, or a PyTorch zip
  checkpoint whose pickle imports only what a state_dict needs (:mod:`service.api.pickle_scan`);
* uploaded datasets: ``.npz`` (read with ``allow_pickle=False``; only the array headers) or
  ``.safetensors`` with ``x_train, y_train, x_val, y_val``;
* server-side data paths (``folder:``/``cifar10:``) inside the operator's allowed roots;
* model factories (``package.module:function``) on the operator's allow-list.

Every refusal is an :class:`InputError` with the stable ``code`` the API answers.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from service.api.pickle_scan import NotTorchZip, UnsafePickle, check_torch_zip
from service.names import ALLOWED_DATA_ROOTS_ENV, ALLOWED_FACTORIES_ENV, ZOO_PREFIXES

__all__ = [
    "DATASET_KEYS",
    "InputError",
    "TensorHeader",
    "WeightsFormat",
    "check_arch",
    "check_dataset_file",
    "check_server_dataset",
    "check_weights_file",
    "read_safetensors_header",
]

DATASET_KEYS = ("x_train", "y_train", "x_val", "y_val")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
MAX_TENSOR_DIMS = 64  # numpy's limit; also bounds the cost of multiplying a shape out
_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_NOT_WEIGHTS = (
    "the weights file is not a torch zip checkpoint or safetensors (legacy pickled checkpoints "
    "are refused: loading them can run code); save it with "
    "torch.save(model.state_dict(), 'model.pt') or safetensors.torch.save_file"
)

#: Bytes per element of the safetensors dtypes (sub-byte float formats are not accepted).
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "C64": 8,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
_INTEGER_DTYPES = frozenset({"U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"})

WeightsFormat = Literal["safetensors", "torch"]


class InputError(ValueError):
    """An input the API refuses; ``code`` is the error code of the 422 answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TensorHeader:
    """One tensor of a safetensors header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _int_list(value: Any) -> list[int] | None:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        return None
    return value


def read_safetensors_header(
    path: Path, *, what: str = "file", code: str = "invalid_safetensors"
) -> dict[str, TensorHeader]:
    """Parse and check a safetensors header against the file's size.

    The header is an 8-byte little-endian length followed by that many bytes of JSON: a
    ``__metadata__`` object of strings and, for every tensor, its ``dtype``, ``shape`` and
    ``data_offsets``. Offsets must tile the data section exactly (no gap, no overlap, nothing
    left over) and each tensor's byte length must match its dtype and shape.

    Raises:
        InputError: with ``code`` for anything that does not hold.
    """

    def bad(detail: str) -> InputError:
        return InputError(code, f"the {what} is not a valid safetensors file: {detail}")

    size = path.stat().st_size
    if size < 8:
        raise bad(f"it is {size} bytes long, shorter than the 8-byte header length")
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise bad(f"the header length {length} exceeds the file ({size} bytes)")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # not UTF-8, not JSON, or an integer of over 4300 digits
        raise bad(f"the header is not JSON ({str(exc)[:200]})") from None
    except RecursionError:  # e.g. "[[[[...": JSON nested deeper than the parser recurses
        raise bad("the header's JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    tensors: dict[str, TensorHeader] = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in info.items()
            ):
                raise bad("__metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict):
            raise bad(f"the entry of tensor {name!r} is not an object")
        dtype = info.get("dtype")
        shape = _int_list(info.get("shape"))
        offsets = _int_list(info.get("data_offsets"))
        if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
            raise bad(f"tensor {name!r} has an unsupported dtype {dtype!r}")
        if shape is None:
            raise bad(f"tensor {name!r} has no valid shape")
        if len(shape) > MAX_TENSOR_DIMS:
            raise bad(
                f"tensor {name!r} has {len(shape)} dimensions; at most {MAX_TENSOR_DIMS} are "
                "accepted"
            )
        if offsets is None or len(offsets) != 2 or offsets[0] > offsets[1]:
            raise bad(f"tensor {name!r} has no valid data_offsets")
        expected = math.prod(shape) * _DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != expected:
            raise bad(
                f"tensor {name!r} spans {offsets[1] - offsets[0]} bytes, but {dtype} of shape "
                f"{shape} needs {expected}"
            )
        tensors[name] = TensorHeader(dtype, tuple(shape), offsets[0], offsets[1])
    if not tensors:
        raise bad("it holds no tensors")
    data_size = size - 8 - length
    position = 0
    for name, tensor in sorted(tensors.items(), key=lambda item: item[1].begin):
        if tensor.begin != position:
            raise bad(f"the data of tensor {name!r} overlaps another tensor or leaves a gap")
        position = tensor.end
    if position != data_size:
        raise bad(
            f"the tensors take {position} bytes, but the file holds {data_size} bytes of data"
        )
    return tensors


def check_weights_file(path: Path, filename: str) -> WeightsFormat:
    """Check uploaded weights; return their format (decides the stored file's suffix).

    ``.safetensors`` files get a header check, ``.pt``/``.pth``/``.bin`` files must be torch
    zip checkpoints holding only tensors; files with another name are recognised by content.

    Raises:
        InputError: ``invalid_weights`` or ``unsafe_pickle``.
    """
    suffix = Path(filename).suffix.lower()
    with path.open("rb") as handle:
        is_zip = handle.read(4) == _ZIP_MAGIC
    if suffix in _TORCH_SUFFIXES or (suffix != ".safetensors" and is_zip):
        if not is_zip:
            raise InputError("invalid_weights", _NOT_WEIGHTS)
        try:
            check_torch_zip(path)
        except UnsafePickle as exc:
            raise InputError("unsafe_pickle", str(exc)) from None
        except NotTorchZip as exc:
            raise InputError("invalid_weights", str(exc)) from None
        return "torch"
    if suffix == ".safetensors":
        read_safetensors_header(path, what="weights file", code="invalid_weights")
        return "safetensors"
    try:
        read_safetensors_header(path, what="weights file", code="invalid_weights")
    except InputError:
        raise InputError("invalid_weights", _NOT_WEIGHTS) from None
    return "safetensors"


def _check_split(shapes: Mapping[str, tuple[int, ...]], integer_labels: Mapping[str, bool]) -> None:
    for split in ("train", "val"):
        x, y = shapes[f"x_{split}"], shapes[f"y_{split}"]
        if len(x) < 2:
            raise InputError(
                "invalid_dataset",
                f"x_{split} must have a sample axis and features, got shape {list(x)}",
            )
        if len(y) != 1:
            raise InputError(
                "invalid_dataset", f"y_{split} must be 1-D labels, got shape {list(y)}"
            )
        if x[0] != y[0] or x[0] == 0:
            raise InputError(
                "invalid_dataset",
                f"x_{split} has {x[0]} samples and y_{split} {y[0]}; they must match and not be 0",
            )
        if not integer_labels[f"y_{split}"]:
            raise InputError("invalid_dataset", f"y_{split} must hold integer class labels")


def _check_npz(path: Path) -> None:
    import numpy as np

    shapes: dict[str, tuple[int, ...]] = {}
    integer: dict[str, bool] = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise InputError(
                    "invalid_dataset",
                    "the dataset is a single .npy array, not an "
                    "npz archive of x_train, y_train, x_val, y_val",
                )
            missing = [key for key in DATASET_KEYS if key not in archive.files]
            if missing:
                raise InputError(
                    "invalid_dataset",
                    f"the npz archive lacks {missing}; it must hold {list(DATASET_KEYS)}",
                )
            for key in DATASET_KEYS:
                with archive.zip.open(f"{key}.npy") as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                if dtype.hasobject:
                    raise InputError(
                        "invalid_dataset",
                        f"{key} holds Python objects; only numeric arrays are accepted",
                    )
                shapes[key] = tuple(int(n) for n in shape)
                integer[key] = dtype.kind in "iu"
    except InputError:
        raise
    except Exception as exc:  # untrusted bytes: any parse failure
        raise InputError(
            "invalid_dataset",
            f"the dataset is not a readable npz archive (saved with numpy.savez): {exc}",
        ) from None
    _check_split(shapes, integer)


def check_dataset_file(path: Path, filename: str) -> Literal["npz", "safetensors"]:
    """Check an uploaded dataset (``.npz`` or ``.safetensors``); return its format.

    Raises:
        InputError: ``invalid_dataset``.
    """
    suffix = Path(filename).suffix.lower()
    with path.open("rb") as handle:
        magic = handle.read(4)
    if suffix == ".npz" or (suffix != ".safetensors" and magic == _ZIP_MAGIC):
        _check_npz(path)
        return "npz"
    if suffix != ".safetensors":
        raise InputError(
            "invalid_dataset",
            f"the dataset must be a .npz or .safetensors file "
            f"with {list(DATASET_KEYS)}, got {filename!r}",
        )
    tensors = read_safetensors_header(path, what="dataset", code="invalid_dataset")
    missing = [key for key in DATASET_KEYS if key not in tensors]
    if missing:
        raise InputError(
            "invalid_dataset",
            f"the safetensors dataset lacks {missing}; it must hold {list(DATASET_KEYS)}",
        )
    _check_split(
        {key: tensors[key].shape for key in DATASET_KEYS},
        {key: tensors[key].dtype in _INTEGER_DTYPES for key in DATASET_KEYS},
    )
    return "safetensors"


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def check_server_dataset(source: str, allowed_roots: Sequence[Path]) -> Path | None:
    """For ``folder:PATH`` / ``cifar10:PATH`` return the resolved path, checked to lie inside
    an allowed root and to exist; ``None`` for other sources.

    Relative paths are taken relative to each root in turn, as the worker does; symlinks and
    ``..`` are resolved first, so neither leads out of a root.

    Raises:
        InputError: ``data_path_not_allowed`` (no roots, or outside them) or
            ``data_path_not_found``.
    """
    kind, sep, rest = source.partition(":")
    if not sep or kind not in ("folder", "cifar10"):
        return None
    roots = []
    for root in allowed_roots:
        try:
            roots.append(Path(root).resolve(strict=True))
        except (OSError, RuntimeError):
            continue
    if not roots:
        raise InputError(
            "data_path_not_allowed",
            f"dataset {source!r} refused: this server allows no data roots (the operator sets "
            f"{ALLOWED_DATA_ROOTS_ENV}); upload the data as an .npz file instead",
        )
    raw = Path(rest)
    candidates = [raw] if raw.is_absolute() else [root / raw for root in roots]
    for candidate in candidates:
        try:
            resolved = candidate.resolve(strict=False)
        except (OSError, RuntimeError, ValueError):
            resolved = None
        if resolved is None or not _inside(resolved, roots):
            raise InputError(
                "data_path_not_allowed",
                f"dataset path {rest!r} is outside the allowed data roots",
            )
        try:
            readable = resolved.exists() and os.access(resolved, os.R_OK)
        except OSError:  # e.g. a name longer than the file system allows: it is not there
            readable = False
        if readable:
            return resolved
    raise InputError(
        "data_path_not_found", f"dataset path {rest!r} does not exist under the allowed data roots"
    )


def check_arch(arch: str, allowed_factories: Sequence[str]) -> None:
    """Refuse a ``package.module:function`` factory that the operator did not allow.

    Raises:
        InputError: ``factory_not_allowed``.
    """
    if arch.startswith(ZOO_PREFIXES):
        return
    if arch not in allowed_factories:
        allowed = ", ".join(allowed_factories) or "none"
        raise InputError(
            "factory_not_allowed",
            f"model factory {arch!r} is not allowed on this server (allowed: {allowed}); use "
            "'rankopt:<net>' or 'torchvision:<model>', or ask the operator to add it to "
            f"{ALLOWED_FACTORIES_ENV}",
        )
