"""Tests of worker.data: built-in datasets, uploaded arrays, the dispatcher and error types
(image folders, CIFAR-10 and path rules are in test_data_sources.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.worker.data_support import check_bundle
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
    load_dataset,
)

Arrays = dict[str, np.ndarray]


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
    check_bundle(bundle, chw, num_classes=10)
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
    check_bundle(bundle, chw, num_classes=3)
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
