"""Tests of worker.data: built-in datasets, uploaded arrays, image folders, CIFAR-10, path rules."""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from worker.data import (
    DEFAULT_LIMITS,
    DataBundle,
    DataLimitError,
    DataLimits,
    DataPathError,
    DatasetError,
    SplitError,
    UnsafePickleError,
    list_builtin_datasets,
    load_arrays,
    load_cifar10,
    load_dataset,
    load_image_folder,
    resolve_data_path,
    restricted_load,
)

Arrays = dict[str, np.ndarray]


def _check_bundle(bundle: DataBundle, chw: tuple[int, int, int], num_classes: int) -> None:
    assert bundle.x_train.dtype == torch.float32 and bundle.x_val.dtype == torch.float32
    assert bundle.y_train.dtype == torch.int64 and bundle.y_val.dtype == torch.int64
    assert bundle.x_train.shape[1:] == chw and bundle.x_val.shape[1:] == chw
    assert bundle.input_shape == chw
    assert len(bundle.x_train) == len(bundle.y_train) > 0
    assert len(bundle.x_val) == len(bundle.y_val) > 0
    assert bundle.num_classes == num_classes
    for y in (bundle.y_train, bundle.y_val):
        assert int(y.min()) >= 0 and int(y.max()) < num_classes
    assert torch.isfinite(bundle.x_train).all() and torch.isfinite(bundle.x_val).all()
    assert bundle.x_train.is_contiguous()


# --- built-in datasets ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist5k() -> DataBundle:
    return load_dataset("mnist5k")


@pytest.mark.parametrize(
    ("name", "chw", "total"), [("digits", (1, 8, 8), 1797), ("mnist5k", (1, 28, 28), 5000)]
)
def test_builtin_loads(
    name: str, chw: tuple[int, int, int], total: int, request: pytest.FixtureRequest
) -> None:
    bundle: DataBundle = request.getfixturevalue(name)
    _check_bundle(bundle, chw, num_classes=10)
    assert bundle.name == name
    assert bundle.y_test is not None  # carved out: 60 / 20 / 20
    assert len(bundle.y_train) + len(bundle.y_val) + len(bundle.y_test) == total
    assert len(bundle.y_val) == pytest.approx(0.2 * total, abs=10)
    assert len(bundle.y_test) == pytest.approx(0.2 * total, abs=10)
    assert set(bundle.y_val.tolist()) == set(range(10))  # stratified: every class in val
    # Normalised: roughly zero mean, unit spread.
    assert abs(float(bundle.x_train.mean())) < 0.1
    assert 0.8 < float(bundle.x_train.std()) < 1.2
    assert bundle.example_input(2).shape == (2, *chw)


def test_list_builtin_datasets() -> None:
    assert list_builtin_datasets() == [
        "breast-cancer",
        "breast-cancer-seq",
        "digits",
        "fashion-mnist",
        "mnist5k",
    ]


@pytest.mark.parametrize(
    ("name", "shape"), [("breast-cancer", (30,)), ("breast-cancer-seq", (3, 10))]
)
def test_tabular_builtins(name: str, shape: tuple[int, ...]) -> None:
    bundle = load_dataset(name, split_seed=1)
    assert bundle.name == name and bundle.input_shape == shape and bundle.num_classes == 2
    assert bundle.y_test is not None and bundle.x_test is not None
    assert bundle.x_test.shape[1:] == shape
    assert len(bundle.y_train) + len(bundle.y_val) + len(bundle.y_test) == 569
    assert set(bundle.y_val.tolist()) == {0, 1} and set(bundle.y_test.tolist()) == {0, 1}
    assert abs(float(bundle.x_train.mean())) < 0.1 and 0.8 < float(bundle.x_train.std()) < 1.2
    again = load_dataset(name, split_seed=1)
    assert torch.equal(again.x_train, bundle.x_train)
    assert torch.equal(again.y_test, bundle.y_test)


def test_tabular_sequences_are_the_features_by_statistic() -> None:
    flat, seq = load_dataset("breast-cancer"), load_dataset("breast-cancer-seq")
    # Same seeded split; channel 0 holds the 10 means, 1 the standard errors, 2 the worst values.
    assert torch.equal(seq.y_val, flat.y_val)
    assert torch.equal(seq.x_val.reshape(-1, 30), flat.x_val)
    assert seq.x_test is not None and flat.x_test is not None
    assert torch.equal(seq.x_test.reshape(-1, 30), flat.x_test)


def test_split_is_deterministic_per_seed(digits: DataBundle) -> None:
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.x_train, digits.x_train)
    assert torch.equal(again.y_val, digits.y_val)
    other = load_dataset("digits", seed=1)
    assert other.x_val.shape == digits.x_val.shape
    assert not torch.equal(other.x_val, digits.x_val)


def test_val_fraction_and_max_train() -> None:
    bundle = load_dataset("digits", seed=3, val_fraction=0.5, max_train=100)
    assert len(bundle.y_train) == 100
    assert len(bundle.y_val) == pytest.approx(1797 / 2, abs=10)
    again = load_dataset("digits", seed=3, val_fraction=0.5, max_train=100)
    assert torch.equal(bundle.x_train, again.x_train)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"seed": -1}, "seed"),
        ({"max_train": 0}, "max_train"),
    ],
)
def test_bad_split_arguments(kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(DatasetError, match=word):
        load_dataset("digits", **kwargs)


# --- uploaded arrays -----------------------------------------------------------------------------


def _arrays(
    n_train: int = 12,
    n_val: int = 6,
    shape: tuple[int, ...] = (1, 8, 8),
    dtype: type = np.float32,
    classes: int = 3,
) -> Arrays:
    rng = np.random.default_rng(0)

    def images(n: int) -> np.ndarray:
        if np.dtype(dtype) == np.uint8:
            return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        return rng.standard_normal((n, *shape)).astype(dtype)

    return {
        "x_train": images(n_train),
        "y_train": np.arange(n_train) % classes,
        "x_val": images(n_val),
        "y_val": np.arange(n_val) % classes,
    }


def _write(tmp_path: Path, arrays: Arrays, fmt: str) -> Path:
    path = tmp_path / f"data.{fmt}"
    if fmt == "npz":
        np.savez(path, **arrays)  # type: ignore[arg-type]
    else:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    return path


def _with(**changes: Any) -> Callable[[], Arrays]:
    def build() -> Arrays:
        arrays = _arrays()
        for key, value in changes.items():
            if value is None:
                del arrays[key]
            else:
                arrays[key] = value
        return arrays

    return build


@dataclass(frozen=True)
class Case:
    build: Callable[[], Arrays]
    word: str
    formats: tuple[str, ...] = ("npz", "safetensors")
    limits: DataLimits = DEFAULT_LIMITS
    error: type[DatasetError] = DatasetError


_NAN_X = _arrays()["x_train"].copy()
_NAN_X[0, 0, 0, 0] = np.nan
_INF_X = _arrays()["x_train"].copy()
_INF_X[1, 0, 2, 3] = np.inf

VALIDATION_CASES = {
    "missing key": Case(_with(y_val=None), "missing array(s) y_val"),
    "x 1-D": Case(_with(x_train=np.zeros(12, np.float32)), "x_train has shape (12,)"),
    "features differ": Case(
        _with(x_train=np.zeros((12, 64), np.float32), x_val=np.zeros((6, 63), np.float32)),
        "same shape",
    ),
    "x 5-D": Case(_with(x_val=np.zeros((6, 1, 1, 8, 8), np.float32)), "5-D"),
    "y 2-D": Case(_with(y_train=np.zeros((12, 2), np.int64)), "y_train has shape"),
    "N mismatch": Case(_with(y_train=np.arange(11) % 3), "must match"),
    "N mismatch val": Case(_with(x_val=np.zeros((5, 1, 8, 8), np.float32)), "must match"),
    "string dtype": Case(
        _with(x_train=np.full((12, 1, 8, 8), "a")), "not numeric", formats=("npz",)
    ),
    "complex dtype": Case(
        _with(x_val=np.zeros((6, 1, 8, 8), np.complex64)), "not numeric", formats=("npz",)
    ),
    "bool dtype": Case(_with(x_train=np.zeros((12, 1, 8, 8), bool)), "not numeric"),
    "bool labels": Case(_with(y_val=np.ones(6, bool)), "y_val has dtype"),
    "fractional labels": Case(_with(y_train=np.full(12, 0.5)), "integer"),
    "negative labels": Case(_with(y_val=np.array([0, 1, 2, -1, 0, 1])), "negative"),
    "one class": Case(_with(y_train=np.zeros(12, int), y_val=np.zeros(6, int)), "2 classes"),
    "too many classes": Case(
        _with(y_val=np.array([0, 1, 2, 0, 1, 5000])), "max_classes", error=DataLimitError
    ),
    "NaN image": Case(_with(x_train=_NAN_X), "NaN"),
    "inf image": Case(_with(x_train=_INF_X), "infinite"),
    "float64 overflow": Case(_with(x_val=np.full((6, 1, 8, 8), 1e300)), "infinite"),
    "NaN label": Case(_with(y_train=np.full(12, np.nan)), "NaN"),
    "shape differs": Case(_with(x_val=np.zeros((6, 1, 9, 9), np.float32)), "same shape"),
    "channels differ": Case(_with(x_val=np.zeros((6, 3, 8, 8), np.float32)), "same shape"),
    "empty train": Case(
        _with(x_train=np.zeros((0, 1, 8, 8), np.float32), y_train=np.zeros(0, int)), "empty"
    ),
    "empty image": Case(_with(x_train=np.zeros((12, 1, 0, 8), np.float32)), "non-empty"),
    "file too big": Case(
        _arrays, "max_file_bytes", limits=DataLimits(max_file_bytes=100), error=DataLimitError
    ),
    "too many examples": Case(
        _arrays, "max_examples", limits=DataLimits(max_examples=10), error=DataLimitError
    ),
    "image too large": Case(
        _arrays, "max_image_side", limits=DataLimits(max_image_side=4), error=DataLimitError
    ),
    "decoded too large": Case(
        _arrays,
        "max_decoded_bytes",
        limits=DataLimits(max_decoded_bytes=1000),
        error=DataLimitError,
    ),
}


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
@pytest.mark.parametrize("case", VALIDATION_CASES.values(), ids=VALIDATION_CASES.keys())
def test_array_validation(tmp_path: Path, case: Case, fmt: str) -> None:
    if fmt not in case.formats:
        pytest.skip(f"{fmt} cannot hold this dtype")
    path = _write(tmp_path, case.build(), fmt)
    with pytest.raises(case.error, match=re.escape(case.word)):
        load_arrays(path, limits=case.limits)
    with pytest.raises(case.error, match=re.escape(case.word)):
        load_dataset(str(path), limits=case.limits)


@pytest.mark.parametrize(
    ("name", "content", "word"),
    [
        ("data.npz", b"this is not a zip archive at all", "not a valid .npz"),
        ("data.npz", b"PK\x03\x04" + b"\0" * 40, "not a valid .npz"),
        ("data.safetensors", b"\xff" * 64, "not a valid .safetensors"),
        ("data.safetensors", b'\x10\0\0\0\0\0\0\0{"a": 1}        ', "not a valid .safetensors"),
        ("data.npy", b"whatever", "expected .npz or .safetensors"),
    ],
)
def test_corrupt_files(tmp_path: Path, name: str, content: bytes, word: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=word):
        load_arrays(path)


def test_truncated_npz(tmp_path: Path) -> None:
    path = _write(tmp_path, _arrays(), "npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="npz"):
        load_arrays(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_arrays(tmp_path / "nothing.npz")


class _Marker:
    """Unpickling this object creates the file at ``path`` (a stand-in for arbitrary code)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_npz_object_array_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    arrays = _arrays()
    arrays["y_train"] = np.array([_Marker(marker)] * 12, dtype=object)
    path = tmp_path / "evil.npz"
    np.savez(path, **arrays, allow_pickle=True)
    with pytest.raises(DatasetError, match="not numeric"):
        load_arrays(path)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float16, np.float64])
@pytest.mark.parametrize(
    ("layout", "stored", "chw"),
    [
        ("NCHW", (3, 8, 6), (3, 8, 6)),
        ("NCHW-gray", (1, 8, 6), (1, 8, 6)),
        ("NCHW-4ch", (4, 8, 6), (4, 8, 6)),
        ("NHWC", (8, 6, 3), (3, 8, 6)),
        ("NHWC-gray", (8, 6, 1), (1, 8, 6)),
        ("NHW", (8, 6), (1, 8, 6)),
    ],
)
def test_valid_arrays_load(
    tmp_path: Path,
    fmt: str,
    dtype: type,
    layout: str,
    stored: tuple[int, ...],
    chw: tuple[int, int, int],
) -> None:
    arrays = _arrays(shape=stored, dtype=dtype)
    bundle = load_dataset(str(_write(tmp_path, arrays, fmt)))
    _check_bundle(bundle, chw, num_classes=3)
    assert bundle.name == f"data.{fmt}"
    expected = arrays["x_train"].astype(np.float32)
    if layout.startswith("NHWC"):
        expected = expected.transpose(0, 3, 1, 2)
    elif layout == "NHW":
        expected = expected[:, None]
    if dtype == np.uint8:
        expected = expected / 255.0
        assert float(bundle.x_train.min()) >= 0.0 and float(bundle.x_train.max()) <= 1.0
    np.testing.assert_allclose(bundle.x_train.numpy(), expected, rtol=1e-6)
    assert bundle.y_val.tolist() == arrays["y_val"].tolist()


def _write_with_layout(tmp_path: Path, arrays: Arrays, fmt: str, layout: str) -> Path:
    path = tmp_path / f"seq.{fmt}"
    if fmt == "npz":
        np.savez(path, layout=np.array(layout), **arrays)  # type: ignore[arg-type]
    else:
        from safetensors.numpy import save_file

        save_file(arrays, str(path), metadata={"layout": layout})
    return path


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_feature_vectors_load_as_they_are(tmp_path: Path, fmt: str, dtype: type) -> None:
    arrays = _arrays(shape=(30,), dtype=dtype)
    bundle = load_dataset(str(_write(tmp_path, arrays, fmt)))
    assert bundle.input_shape == (30,) and bundle.x_train.shape == (12, 30)
    # Features are not images: uint8 is cast, never scaled by 1/255.
    np.testing.assert_array_equal(bundle.x_val.numpy(), arrays["x_val"].astype(np.float32))


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_sequences_load_when_declared_ncl(tmp_path: Path, fmt: str) -> None:
    arrays = _arrays(shape=(3, 10))
    bundle = load_dataset(str(_write_with_layout(tmp_path, arrays, fmt, "NCL")))
    assert bundle.input_shape == (3, 10) and bundle.x_train.shape == (12, 3, 10)
    np.testing.assert_array_equal(bundle.x_train.numpy(), arrays["x_train"])
    # Undeclared, the same 3-D arrays are still (N, H, W) grayscale images.
    assert load_dataset(str(_write(tmp_path, arrays, fmt))).input_shape == (1, 3, 10)


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
@pytest.mark.parametrize(("shape", "layout"), [((30,), None), ((3, 10), "NCL")])
def test_features_and_sequences_with_a_test_split(
    tmp_path: Path, fmt: str, shape: tuple[int, ...], layout: str | None
) -> None:
    def write(arrays: Arrays) -> Path:
        if layout is None:
            return _write(tmp_path, arrays, fmt)
        return _write_with_layout(tmp_path, arrays, fmt, layout)

    arrays = _arrays(shape=shape)
    rng = np.random.default_rng(1)
    arrays["x_test"] = rng.standard_normal((5, *shape)).astype(np.float32)
    arrays["y_test"] = np.arange(5) % 3
    bundle = load_dataset(str(write(arrays)))
    assert bundle.input_shape == shape and bundle.x_test is not None
    np.testing.assert_array_equal(bundle.x_test.numpy(), arrays["x_test"])
    short = (*shape[:-1], shape[-1] - 1)  # one feature / position short
    arrays["x_test"] = rng.standard_normal((5, *short)).astype(np.float32)
    with pytest.raises(SplitError, match="x_test examples have shape"):
        load_dataset(str(write(arrays)))


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
@pytest.mark.parametrize(
    ("shape", "layout", "word"),
    [((1, 8, 8), "NCL", "layout NCL"), ((3, 10), "NLC", "layout must be one of NCL")],
)
def test_bad_sequence_layouts(
    tmp_path: Path, fmt: str, shape: tuple[int, ...], layout: str, word: str
) -> None:
    path = _write_with_layout(tmp_path, _arrays(shape=shape), fmt, layout)
    with pytest.raises(DatasetError, match=word):
        load_dataset(str(path))


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_labels_as_whole_floats_and_column(tmp_path: Path, fmt: str) -> None:
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"].astype(np.float32)
    arrays["y_val"] = arrays["y_val"].astype(np.uint8).reshape(-1, 1)
    bundle = load_arrays(_write(tmp_path, arrays, fmt))
    assert bundle.y_train.tolist() == _arrays()["y_train"].tolist()
    assert bundle.y_val.shape == (6,)


def test_arrays_max_train(tmp_path: Path) -> None:
    path = _write(tmp_path, _arrays(n_train=40), "npz")
    first = load_dataset(str(path), max_train=10, seed=5)
    assert len(first.y_train) == 10 and len(first.y_val) == 6
    assert torch.equal(first.x_train, load_dataset(str(path), max_train=10, seed=5).x_train)


# --- image folders -------------------------------------------------------------------------------


def _image_folder(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            size = (20 + 5 * (i % 3), 30 - 2 * (i % 4))
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            pixels[..., index % 3] = 255  # colour tells the classes apart
            img = Image.fromarray(pixels)
            if i % 5 == 1:
                img = img.convert("L")  # grayscale becomes RGB
            elif i % 5 == 2:
                img = img.convert("RGBA")
            ext = ".png" if i % 2 else ".bmp"
            img.save(root / name / f"img{i}{ext}")
    return root


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


def test_image_folder_loads(data_root: Path) -> None:
    _image_folder(data_root / "pets", {"cat": 10, "dog": 10, "fish": 5})
    (data_root / "pets" / "cat" / "notes.txt").write_text("not an image")
    bundle = load_dataset("folder:pets", allowed_roots=[data_root])
    _check_bundle(bundle, (3, 32, 32), num_classes=3)
    assert bundle.name == "folder:pets"
    assert bundle.y_test is not None
    assert len(bundle.y_train) + len(bundle.y_val) + len(bundle.y_test) == 25
    assert len(bundle.y_val) == 5  # 2 + 2 + 1, stratified
    assert abs(float(bundle.x_train.mean())) < 0.1  # normalised with train statistics
    again = load_dataset(f"folder:{data_root / 'pets'}", allowed_roots=[data_root])
    assert torch.equal(again.x_val, bundle.x_val)


def test_image_folder_size_and_stats(data_root: Path) -> None:
    _image_folder(data_root / "pets", {"cat": 5, "dog": 5})
    bundle = load_image_folder(
        "pets",
        allowed_roots=[data_root],
        image_size=16,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    _check_bundle(bundle, (3, 16, 16), num_classes=2)
    assert float(bundle.x_train.min()) >= -1.0 and float(bundle.x_train.max()) <= 1.0


@pytest.mark.parametrize(
    ("prepare", "word", "error"),
    [
        (lambda r: _image_folder(r / "ds", {"only": 3}), "at least 2", DatasetError),
        (
            lambda r: (_image_folder(r / "ds", {"a": 3, "b": 3}), (r / "ds" / "c").mkdir()),
            "no images",
            DatasetError,
        ),
        (
            lambda r: (
                _image_folder(r / "ds", {"a": 3, "b": 3}),
                (r / "ds" / "a" / "bad.png").write_bytes(b"not a png"),
            ),
            "cannot be read",
            DatasetError,
        ),
    ],
    ids=["one class", "empty class", "corrupt image"],
)
def test_image_folder_errors(
    data_root: Path, prepare: Callable[[Path], object], word: str, error: type[Exception]
) -> None:
    prepare(data_root)
    with pytest.raises(error, match=word):
        load_dataset("folder:ds", allowed_roots=[data_root])


def test_image_folder_limits(data_root: Path) -> None:
    _image_folder(data_root / "ds", {"a": 4, "b": 4})
    with pytest.raises(DataLimitError, match="max_examples"):
        load_dataset("folder:ds", allowed_roots=[data_root], limits=DataLimits(max_examples=5))
    with pytest.raises(DataLimitError, match="max_source_pixels"):
        load_dataset(
            "folder:ds", allowed_roots=[data_root], limits=DataLimits(max_source_pixels=100)
        )
    with pytest.raises(DataLimitError, match="max_image_side"):
        load_dataset("folder:ds", allowed_roots=[data_root], limits=DataLimits(max_image_side=16))


# --- CIFAR-10 ------------------------------------------------------------------------------------

_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")


def _cifar_batch(n: int, offset: int) -> dict[bytes, Any]:
    data = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    data[:, 0], data[:, 1], data[:, 2] = 10, 20, 30  # R, G, B planes
    data[:, 0, 0, 0] = np.arange(n) + offset  # tells examples apart
    return {
        b"batch_label": b"training batch",
        b"labels": [(i + offset) % 10 for i in range(n)],
        b"data": data.reshape(n, 3072),
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }


def _cifar_dir(root: Path, n: int = 4, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    base = root / "cifar" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for i, name in enumerate((*_BATCHES, "test_batch")):
        with (base / name).open("wb") as fp:
            pickle.dump(_cifar_batch(n, offset=10 * i), fp, protocol=protocol)
    return base


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_loads(data_root: Path, protocol: int) -> None:
    _cifar_dir(data_root, n=4, protocol=protocol)
    bundle = load_dataset("cifar10:cifar", allowed_roots=[data_root])
    _check_bundle(bundle, (3, 32, 32), num_classes=10)
    assert bundle.name == "cifar10"
    assert bundle.y_test is not None and bundle.x_test is not None  # test_batch
    assert len(bundle.y_train) + len(bundle.y_val) == 20 and len(bundle.y_test) == 4
    assert bundle.y_test.tolist() == [(50 + i) % 10 for i in range(4)]
    # Channel planes land in the right place and carry CIFAR's normalisation constants.
    for channel, value, mean, std in zip(
        range(3), (10, 20, 30), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ):
        got = float(bundle.x_train[0, channel, 5, 5])
        assert got == pytest.approx((value / 255 - mean) / std, abs=1e-5)
    assert float(bundle.x_test[1, 0, 0, 0]) == pytest.approx((51 / 255 - 0.4914) / 0.2470, 1e-5)


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING), as CIFAR-10's own files hold them."""

    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)
    write: Callable[[bytes], object]  # set by pickle._Pickler.__init__
    memoize: Callable[[object], None]

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def test_cifar10_python2_pickles(data_root: Path) -> None:
    """The real batches: Python 2 pickles, ``str`` keys and data, ``numpy.core`` globals."""
    base = _cifar_dir(data_root)
    for name in (*_BATCHES, "test_batch"):
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(_cifar_batch(4, offset=3))
        raw = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"cnumpy.core.multiarray\n" in raw and b"_codecs" not in raw
        (base / name).write_bytes(raw)
    bundle = load_dataset("cifar10:cifar", allowed_roots=[data_root])
    _check_bundle(bundle, (3, 32, 32), num_classes=10)
    assert bundle.y_test is not None and bundle.y_test.tolist() == [3, 4, 5, 6]


def test_cifar10_batches_dir_and_max_train(data_root: Path) -> None:
    base = _cifar_dir(data_root, n=6)
    bundle = load_cifar10(base, allowed_roots=[data_root], max_train=7, seed=1)
    assert bundle.y_test is not None
    assert len(bundle.y_train) == 7 and len(bundle.y_test) == 6


def test_cifar10_missing_batch(data_root: Path) -> None:
    base = _cifar_dir(data_root)
    (base / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match="data_batch_4"):
        load_dataset("cifar10:cifar", allowed_roots=[data_root])


@pytest.mark.parametrize(
    ("batch", "word"),
    [
        ({b"labels": [1]}, "'data'"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}, "3072"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "must match"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 12]}, "0..9"),
        ([1, 2, 3], "expected dict"),
    ],
)
def test_cifar10_malformed_batch(data_root: Path, batch: object, word: str) -> None:
    base = _cifar_dir(data_root)
    (base / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DatasetError, match=word):
        load_dataset("cifar10:cifar", allowed_roots=[data_root])


class _Reduce:
    """Pickles as ``func(*args)``: what a malicious batch would run on load."""

    def __init__(self, func: Callable[..., object], *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


@pytest.mark.parametrize("payload", ["open", "os.system", "numpy.save"])
def test_cifar10_malicious_pickle_is_refused(data_root: Path, tmp_path: Path, payload: str) -> None:
    base = _cifar_dir(data_root)
    marker = tmp_path / "marker.npy"
    evil = {
        "open": _Reduce(open, str(marker), "w"),
        "os.system": _Reduce(os.system, f"touch {marker}"),
        "numpy.save": _Reduce(np.save, str(marker), np.zeros(1)),
    }[payload]
    batch = _cifar_batch(4, offset=20)
    batch[b"batch_label"] = evil
    (base / "data_batch_3").write_bytes(pickle.dumps(batch))
    with pytest.raises(UnsafePickleError, match="not allowed"):
        load_dataset("cifar10:cifar", allowed_roots=[data_root])
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_load_rebuilds_numpy(protocol: int) -> None:
    value = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        b"b": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "c": [np.int64(3), 1.5, "text", (1, 2)],
    }
    out = restricted_load(pickle.dumps(value, protocol=protocol))
    np.testing.assert_array_equal(out["a"], value["a"])
    np.testing.assert_array_equal(out[b"b"], value[b"b"])
    assert out["c"] == value["c"]


def test_restricted_load_refuses_codecs_other_than_latin1() -> None:
    import codecs

    with pytest.raises(UnsafePickleError, match="codec"):
        restricted_load(pickle.dumps(_Reduce(codecs.encode, "x", "rot13"), protocol=2))
    with pytest.raises(DatasetError, match="not a valid pickle"):
        restricted_load(b"\x80\x04garbage")


# --- paths ---------------------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def test_resolve_inside(data_root: Path) -> None:
    (data_root / "ds" / "sub").mkdir(parents=True)
    assert resolve_data_path("ds", [data_root]) == (data_root / "ds").resolve()
    assert resolve_data_path(data_root / "ds" / "sub", [data_root]) == data_root / "ds" / "sub"
    assert resolve_data_path("ds/sub/..", [data_root]) == (data_root / "ds").resolve()


@pytest.mark.parametrize(
    "path",
    [
        lambda root, out: "../outside",
        lambda root, out: "ds/../../outside",
        lambda root, out: str(out),
        lambda root, out: f"{root}/../outside",
        lambda root, out: "/etc",
        lambda root, out: str(out / "does-not-exist"),  # refused as outside, not "missing"
        lambda root, out: "link",
        lambda root, out: "ds/link-in-ds",
    ],
    ids=["dotdot", "nested dotdot", "absolute", "absolute dotdot", "etc", "absent", "link", "deep"],
)
def test_resolve_refuses_outside(
    data_root: Path, outside: Path, path: Callable[[Path, Path], str]
) -> None:
    (data_root / "ds").mkdir()
    (data_root / "link").symlink_to(outside, target_is_directory=True)
    (data_root / "ds" / "link-in-ds").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataPathError, match="outside the allowed data roots"):
        resolve_data_path(path(data_root, outside), [data_root])


def test_resolve_missing_and_no_roots(data_root: Path) -> None:
    with pytest.raises(DataPathError, match="does not exist"):
        resolve_data_path("nothing-here", [data_root])
    with pytest.raises(DataPathError, match="no data roots"):
        resolve_data_path(data_root, [])


def test_loaders_refuse_paths_outside(data_root: Path, outside: Path) -> None:
    _image_folder(outside / "ds", {"a": 3, "b": 3})
    _cifar_dir(outside)
    (data_root / "link").symlink_to(outside / "ds", target_is_directory=True)
    for source in (
        "folder:../outside/ds",
        f"folder:{outside / 'ds'}",
        "folder:link",
        "cifar10:../outside/cifar",
        f"cifar10:{outside / 'cifar'}",
    ):
        with pytest.raises(DataPathError):
            load_dataset(source, allowed_roots=[data_root])
    with pytest.raises(DataPathError, match="no data roots"):
        load_dataset("folder:ds")


def test_symlinked_files_inside_a_tree_are_refused(data_root: Path, outside: Path) -> None:
    _image_folder(data_root / "ds", {"a": 3, "b": 3})
    _image_folder(outside / "secret", {"x": 1})
    (data_root / "ds" / "a" / "leak.png").symlink_to(outside / "secret" / "x" / "img0.bmp")
    with pytest.raises(DataPathError):
        load_dataset("folder:ds", allowed_roots=[data_root])
    base = _cifar_dir(data_root)
    evil = _cifar_dir(outside)
    (base / "test_batch").unlink()
    (base / "test_batch").symlink_to(evil / "test_batch")
    with pytest.raises(DataPathError):
        load_dataset("cifar10:cifar", allowed_roots=[data_root])


# --- dispatcher and types ------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["imagenet", "data.csv", "folder:", "cifar10:", "", "s3://x"])
def test_unknown_sources(source: str) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(source)
    if source and not source.endswith(":"):
        for form in ('"digits"', ".npz", '"folder:<path>"', '"cifar10:<path>"'):
            assert form in str(info.value)


def test_error_hierarchy_and_limits() -> None:
    assert issubclass(DatasetError, ValueError)
    for sub in (DataPathError, DataLimitError, UnsafePickleError):
        assert issubclass(sub, DatasetError)
    with pytest.raises(ValueError, match="max_examples"):
        DataLimits(max_examples=0)
    with pytest.raises(ValueError, match="max_classes"):
        DataLimits(max_classes=1)
