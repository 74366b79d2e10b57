"""Tests of worker.data: image folders, CIFAR-10 and the path rules."""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from tests.worker.data_support import check_bundle
from worker.data import (
    DataLimitError,
    DataLimits,
    DataPathError,
    DatasetError,
    UnsafePickleError,
    load_cifar10,
    load_dataset,
    load_image_folder,
    resolve_data_path,
    restricted_load,
)

Arrays = dict[str, np.ndarray]


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
    check_bundle(bundle, (3, 32, 32), num_classes=3)
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
    check_bundle(bundle, (3, 16, 16), num_classes=2)
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
    check_bundle(bundle, (3, 32, 32), num_classes=10)
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
    check_bundle(bundle, (3, 32, 32), num_classes=10)
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
