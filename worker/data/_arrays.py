"""Uploaded arrays: a ``.npz`` or ``.safetensors`` file holding ``x_train, y_train, x_val, y_val``
and, optionally, a held-out test split ``x_test, y_test`` (both or neither; same example shape).

Accepted layouts of ``x_*``:

* 2-D ``(N, F)``: feature vectors (for MLPs), used as they are;
* 3-D ``(N, C, L)``: sequences (for 1-D CNNs), when the file declares the layout ``NCL``: an
  npz member ``layout`` holding the string (``np.savez(..., layout=np.array("NCL"))``), or the
  safetensors metadata entry ``{"layout": "NCL"}``;
* 3-D ``(N, H, W)`` otherwise: one channel is added, giving ``(N, 1, H, W)``;
* 4-D ``(N, C, H, W)``;
* 4-D ``(N, H, W, C)`` when the last dimension is 1 or 3 and the second is not (channels-last, as
  Keras and PIL write it); it is transposed to ``(N, C, H, W)``. A shape such as
  ``(N, 3, 32, 3)`` that reads both ways is taken as ``(N, C, H, W)``.

``y_*`` are ``(N,)`` (or ``(N, 1)``) class labels, integer dtype or whole-valued floats, in
``[0, num_classes)`` where ``num_classes = max(label) + 1``.

The examples are used as given, since the uploaded model was trained on a preprocessing this
service cannot know: ``uint8`` images are scaled by 1/255 to ``[0, 1]``; every other dtype is only
cast to float32. Upload the arrays preprocessed the way the model expects them.

Everything structural (keys, dtypes, shapes, sizes) is checked from the array headers before any
array is read or decompressed; values (NaN/inf, labels) are checked after.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worker.data._bundle import DataBundle, DataSplits, array_splits
from worker.data._errors import DataLimitError, DatasetError, SplitError
from worker.data._limits import DEFAULT_LIMITS, DataLimits
from worker.data._split import cap_train, check_split_args, resolve_split_seed

__all__ = ["ARRAY_KEYS", "TEST_KEYS", "load_arrays", "open_arrays"]

logger = logging.getLogger(__name__)

ARRAY_KEYS = ("x_train", "y_train", "x_val", "y_val")
#: The npz member or safetensors metadata key that declares the layout of 3-D ``x_*``.
LAYOUT_KEY = "layout"
_LAYOUTS = ("NCL",)
_EXPECTED_RANKS = (
    "expected 2-D (N, F) features, 3-D (N, H, W) images or (N, C, L) sequences (declared "
    f"with {LAYOUT_KEY}='NCL'), or 4-D (N, C, H, W) or (N, H, W, C) images with C of 1 or 3"
)
TEST_KEYS = ("x_test", "y_test")
_ALL_KEYS = ARRAY_KEYS + TEST_KEYS
_NUMERIC_KINDS = "uif"  # unsigned, signed integer, floating point

# safetensors dtype names numpy can hold; others (BF16, F8_*) are refused with a hint.
_SAFETENSORS_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
}


@dataclass(frozen=True)
class _Header:
    """What a file declares about one array, read without loading the array."""

    shape: tuple[int, ...]
    dtype: np.dtype | None  # None: a dtype numpy cannot represent
    dtype_name: str


def load_arrays(
    path: str | os.PathLike[str],
    *,
    split_seed: int = 0,
    limits: DataLimits = DEFAULT_LIMITS,
    max_train: int | None = None,
    seed: int | None = None,
) -> DataBundle:
    """:func:`open_arrays` as a :class:`DataBundle` (``seed``: old name of ``split_seed``)."""
    return open_arrays(
        path, split_seed=resolve_split_seed(split_seed, seed), limits=limits, max_train=max_train
    ).to_bundle()


def open_arrays(
    path: str | os.PathLike[str],
    *,
    split_seed: int = 0,
    limits: DataLimits = DEFAULT_LIMITS,
    max_train: int | None = None,
) -> DataSplits:
    """Load and validate an uploaded ``.npz`` or ``.safetensors`` dataset.

    ``path`` is opened as given: confining it is the caller's job. ``split_seed`` only picks
    the training subset when ``max_train`` caps it; validation and test come from the file.

    Raises:
        DatasetError: the file is missing, not a valid archive, or its arrays are missing,
            malformed or inconsistent (the message names the key and what was expected).
        SplitError: ``x_test`` without ``y_test`` (or the reverse), or test images of another
            shape than the training images.
        DataLimitError: the file or its arrays exceed ``limits``.
    """
    check_split_args(seed=split_seed, val_fraction=0.5, max_train=max_train)
    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"dataset file {file.name!r} does not exist or is not a regular file")
    limits.check_file_bytes(f"dataset file {file.name!r}", file.stat().st_size)
    suffix = file.suffix.lower()
    if suffix == ".npz":
        arrays, layout = _read_npz(file, limits)
    elif suffix == ".safetensors":
        arrays, layout = _read_safetensors(file, limits)
    else:
        raise DatasetError(
            f"dataset file {file.name!r} has suffix {suffix!r}; expected .npz or .safetensors"
        )
    sequences = layout == "NCL"
    splits = [s for s in ("train", "val", "test") if f"x_{s}" in arrays]
    xs = {s: _prepare_images(f"x_{s}", arrays[f"x_{s}"], sequences=sequences) for s in splits}
    ys = {s: _prepare_labels(f"y_{s}", arrays[f"y_{s}"], limits) for s in splits}
    num_classes = int(max(int(y.max()) for y in ys.values())) + 1
    if num_classes < 2:
        raise DatasetError(
            f"labels span only {num_classes} class (largest label {num_classes - 1}); "
            "at least 2 classes are needed"
        )
    xs["train"], ys["train"] = cap_train(
        xs["train"], ys["train"], max_train=max_train, seed=split_seed
    )
    logger.info(
        "loaded %s: %s, %d classes, examples %s",
        file.name,
        ", ".join(f"{len(ys[s])} {s}" for s in splits),
        num_classes,
        xs["train"].shape[1:],
    )

    def pair(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(xs[split]), torch.from_numpy(ys[split])

    has_test = "test" in xs
    return array_splits(
        file.name,
        train=pair("train"),
        val=pair("val"),
        test=pair("test") if has_test else None,
        num_classes=num_classes,
        split_seed=split_seed,
        test_note=(
            "x_test/y_test of the file"
            if has_test
            else f"{file.name} holds no x_test/y_test; there is no held-out test split"
        ),
    )


# --- readers -------------------------------------------------------------------------------------


def _read_npz(file: Path, limits: DataLimits) -> tuple[dict[str, np.ndarray], str | None]:
    try:
        with zipfile.ZipFile(file) as archive:
            headers = _npz_headers(archive)
            layout = _npz_layout(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise DatasetError(
            f"dataset file {file.name!r} is not a valid .npz (zip) archive: {exc}"
        ) from exc
    _check_headers(headers, limits, layout=layout)
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {key: np.asarray(npz[key]) for key in _ALL_KEYS if key in headers}
    except DatasetError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as exc:
        raise DatasetError(f"dataset file {file.name!r} cannot be read as .npz: {exc}") from exc
    return arrays, layout


def _npz_layout(archive: zipfile.ZipFile) -> str | None:
    """The declared layout: a small string array ``layout`` in the archive, or None."""
    member = f"{LAYOUT_KEY}.npy"
    if member not in archive.namelist():
        return None
    if archive.getinfo(member).file_size > 1024:
        raise DatasetError(f"{LAYOUT_KEY} must be a short string such as 'NCL'")
    try:
        with archive.open(member) as fp:
            value = np.lib.format.read_array(fp, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{LAYOUT_KEY} is not a valid .npy array: {exc}") from exc
    return _check_layout(str(value) if value.dtype.kind == "U" and value.size == 1 else None)


def _check_layout(layout: str | None) -> str | None:
    if layout is None or layout not in _LAYOUTS:
        raise DatasetError(
            f"{LAYOUT_KEY} must be one of {', '.join(_LAYOUTS)} (a string), got {layout!r}; "
            "leave it out for images and (N, F) features"
        )
    return layout


def _npz_headers(archive: zipfile.ZipFile) -> dict[str, _Header]:
    """Headers of the ``.npy`` members of an npz archive, read without decompressing the data."""
    headers: dict[str, _Header] = {}
    for member in archive.namelist():
        key = member[: -len(".npy")] if member.endswith(".npy") else member
        if key not in _ALL_KEYS:
            logger.debug("ignoring npz member %r", member)
            continue
        try:
            with archive.open(member) as fp:
                version = np.lib.format.read_magic(fp)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
                else:  # (2, 0) and (3, 0) share the header layout; 3.0 only allows UTF-8 names
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        except (ValueError, OSError, EOFError, SyntaxError) as exc:
            raise DatasetError(
                f"{key} is not a valid .npy array inside the archive: {exc}"
            ) from exc
        headers[key] = _Header(tuple(int(d) for d in shape), np.dtype(dtype), str(dtype))
    return headers


def _read_safetensors(file: Path, limits: DataLimits) -> tuple[dict[str, np.ndarray], str | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="numpy") as st:
            metadata = st.metadata() or {}
            layout = _check_layout(metadata[LAYOUT_KEY]) if LAYOUT_KEY in metadata else None
            headers: dict[str, _Header] = {}
            for key in st.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                if key not in _ALL_KEYS:
                    continue
                piece = st.get_slice(key)
                name = str(piece.get_dtype())
                shape = tuple(int(d) for d in piece.get_shape())
                headers[key] = _Header(shape, _SAFETENSORS_DTYPES.get(name), name)
            _check_headers(headers, limits, layout=layout)
            arrays = {key: np.asarray(st.get_tensor(key)) for key in _ALL_KEYS if key in headers}
            return arrays, layout
    except DatasetError:
        raise
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise DatasetError(
            f"dataset file {file.name!r} is not a valid .safetensors file: {exc}"
        ) from exc


# --- structural checks (headers only) -----------------------------------------------------------


def _image_chw(shape: tuple[int, ...]) -> tuple[tuple[int, int, int], bool]:
    """``(C, H, W)`` of one image of an array shaped ``shape``, and whether it is channels-last.

    ``shape`` must be 3-D or 4-D (checked by the caller).
    """
    if len(shape) == 3:
        return (1, shape[1], shape[2]), False
    _, d1, d2, d3 = shape
    if d3 in (1, 3) and d1 not in (1, 3):
        return (d3, d1, d2), True
    return (d1, d2, d3), False


def _example_shape(shape: tuple[int, ...], *, sequences: bool) -> tuple[tuple[int, ...], bool]:
    """The shape of one example once loaded, and whether the array is channels-last images.

    ``(F,)`` for 2-D features, ``(C, L)`` for declared sequences, else ``(C, H, W)`` images.
    """
    if len(shape) == 2:
        return (shape[1],), False
    if len(shape) == 3 and sequences:
        return (shape[1], shape[2]), False
    return _image_chw(shape)


def _check_headers(
    headers: Mapping[str, _Header], limits: DataLimits, *, layout: str | None = None
) -> None:
    """Validate keys, dtypes, shapes and sizes from the headers; raise :class:`DatasetError`."""
    missing = [key for key in ARRAY_KEYS if key not in headers]
    if missing:
        raise DatasetError(
            f"missing array(s) {', '.join(missing)}; the file must hold "
            f"{', '.join(ARRAY_KEYS)} (found: {', '.join(sorted(headers)) or 'nothing'})"
        )
    present = [key for key in TEST_KEYS if key in headers]
    if len(present) == 1:
        other = "y_test" if present[0] == "x_test" else "x_test"
        raise SplitError(
            f"the file holds {present[0]} but not {other}; a test split needs both "
            "(or leave both out)"
        )
    keys = [key for key in _ALL_KEYS if key in headers]
    for key in keys:
        _check_dtype(key, headers[key])
    example_shapes: dict[str, tuple[int, ...]] = {}
    for split in ("train", "val", "test") if present else ("train", "val"):
        x_key, y_key = f"x_{split}", f"y_{split}"
        error = SplitError if split == "test" else DatasetError
        x_shape, y_shape = headers[x_key].shape, headers[y_key].shape
        if len(x_shape) not in (2, 3, 4) or (layout == "NCL" and len(x_shape) != 3):
            raise error(
                f"{x_key} has shape {x_shape} ({len(x_shape)}-D, layout {layout or 'not given'}); "
                + _EXPECTED_RANKS
            )
        if not (len(y_shape) == 1 or (len(y_shape) == 2 and y_shape[1] == 1)):
            raise error(f"{y_key} has shape {y_shape} ({len(y_shape)}-D); expected 1-D (N,) labels")
        if x_shape[0] != y_shape[0]:
            raise error(
                f"{x_key} holds {x_shape[0]} examples but {y_key} holds {y_shape[0]} labels; "
                "their first dimensions must match"
            )
        if x_shape[0] == 0:
            raise error(f"{x_key} is empty (0 examples); each split needs at least one")
        example, _ = _example_shape(x_shape, sequences=layout == "NCL")
        if min(example) == 0:
            raise error(f"{x_key} has shape {x_shape}; example dimensions must be non-empty")
        if len(example) == 3:
            limits.check_image_side(x_key, example[1], example[2])
        example_shapes[split] = example
    if example_shapes["train"] != example_shapes["val"]:
        raise DatasetError(
            f"x_train examples have shape {example_shapes['train']} but x_val examples have "
            f"shape {example_shapes['val']}; train and validation examples must have the same "
            "shape"
        )
    if "test" in example_shapes and example_shapes["test"] != example_shapes["train"]:
        raise SplitError(
            f"x_test examples have shape {example_shapes['test']} but x_train examples have "
            f"shape {example_shapes['train']}; test examples must have the training examples' "
            "shape"
        )
    limits.check_examples(
        "the dataset", sum(headers[f"x_{split}"].shape[0] for split in example_shapes)
    )
    decoded = sum(
        int(np.prod(headers[key].shape, dtype=np.int64)) * _itemsize(headers[key]) for key in keys
    )
    if decoded > limits.max_decoded_bytes:
        raise DataLimitError(
            f"the arrays hold {decoded} bytes once decoded; the limit is "
            f"{limits.max_decoded_bytes} bytes (max_decoded_bytes)"
        )


def _check_dtype(key: str, header: _Header) -> None:
    if header.dtype is None:
        raise DatasetError(
            f"{key} has dtype {header.dtype_name}, which is not supported; expected an integer "
            "or floating-point dtype such as uint8, int64, float16, float32 (convert BF16/F8 to "
            "float32)"
        )
    if header.dtype.kind not in _NUMERIC_KINDS or header.dtype.fields is not None:
        raise DatasetError(
            f"{key} has dtype {header.dtype_name}, which is not numeric; expected an integer or "
            "floating-point dtype (uint8, int64, float32, ...)"
        )


def _itemsize(header: _Header) -> int:
    return header.dtype.itemsize if header.dtype is not None else 8


# --- value checks and conversion ----------------------------------------------------------------


def _prepare_images(key: str, x: np.ndarray, *, sequences: bool = False) -> np.ndarray:
    """Float32 ``(N, C, H, W)`` images (uint8 scaled to [0, 1]), or ``(N, F)`` features and
    ``(N, C, L)`` sequences only cast to float32; NaN/inf refused."""
    example, channels_last = _example_shape(x.shape, sequences=sequences)
    images = len(example) == 3
    if images and x.ndim == 3:
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W)
    elif channels_last:
        x = x.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    # uint8 images are scaled to [0, 1]; float64 beyond float32's range becomes inf, refused below.
    with np.errstate(over="ignore"):
        out = (
            x.astype(np.float32) / np.float32(255.0)
            if images and x.dtype == np.uint8
            else x.astype(np.float32)
        )
    if not np.isfinite(out).all():
        raise DatasetError(
            f"{key} contains NaN or infinite values (after conversion to float32); "
            "expected finite values"
        )
    return np.ascontiguousarray(out)


def _prepare_labels(key: str, y: np.ndarray, limits: DataLimits) -> np.ndarray:
    """Int64 ``(N,)`` labels in ``[0, max_classes)``."""
    y = y.reshape(-1)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DatasetError(f"{key} contains NaN or infinite values; expected integer labels")
        if not np.array_equal(y, np.round(y)):
            bad = y[y != np.round(y)][0]
            raise DatasetError(
                f"{key} holds non-integer values (e.g. {bad}); labels must be integer class ids"
            )
    low, high = y.min(), y.max()
    if low < 0:
        raise DatasetError(
            f"{key} holds negative labels (smallest {low}); labels must be in [0, num_classes)"
        )
    if high >= limits.max_classes:
        raise DataLimitError(
            f"{key} holds label {high}, i.e. at least {int(high) + 1} classes; the limit is "
            f"{limits.max_classes} classes (max_classes)"
        )
    return y.astype(np.int64)
