"""REST API, uploads: weights and datasets are checked without torch and never unpickled."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.numpy import save_file as save_numpy

from service.api.inputs import InputError, check_dataset_file, check_weights_file
from service.api.pickle_scan import ALLOWED_GLOBALS, UnsafePickle, scan_pickle
from service.settings import Settings
from tests.service.api_helpers import (
    SPEC,
    error_of,
    npz_dataset,
    safetensors_weights,
    small_net,
    submit,
    torch_weights,
)


class Evil:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class EvalEvil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, ("__import__('os').getcwd()",))


def _uploads(settings: Settings) -> list[Path]:
    root = settings.resolved_upload_dir
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# ------------------------------------------------------------------ accepted weights
@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch_weights(p / "a.pt"),
        lambda p: torch_weights(p / "a.pth", pickle_protocol=4),  # STACK_GLOBAL + memo
        lambda p: safetensors_weights(p / "a.safetensors"),
        lambda p: _save(p / "a.bin", {"state_dict": small_net().state_dict()}),
        lambda p: _save(p / "a.pt", dict(small_net().named_parameters())),  # _rebuild_parameter
        lambda p: _save(p / "a.pt", {k: v.half() for k, v in small_net().state_dict().items()}),
        lambda p: _save(p / "a.pt", {k: v.bfloat16() for k, v in small_net().state_dict().items()}),
        lambda p: _save(
            p / "a.pt",
            {
                "i": torch.arange(3),
                "b": torch.ones(2, dtype=torch.bool),
                "u": torch.zeros(2, dtype=torch.uint8),
            },
        ),
    ],
)
def test_real_state_dicts_are_accepted(
    api: TestClient, alice: dict[str, str], tmp_path: Path, make: object
) -> None:
    weights = make(tmp_path)  # type: ignore[operator]
    response = submit(api, alice, SPEC, weights)
    assert response.status_code == 201, response.text


def _save(path: Path, obj: object, **kwargs: object) -> Path:
    torch.save(obj, path, **kwargs)  # type: ignore[arg-type]
    return path


def test_weights_format_comes_from_content_when_the_name_says_nothing(tmp_path: Path) -> None:
    st = safetensors_weights(tmp_path / "w.safetensors")
    pt = torch_weights(tmp_path / "w.pt")
    assert check_weights_file(st, "weights") == "safetensors"
    assert check_weights_file(pt, "upload.dat") == "torch"
    with pytest.raises(InputError) as err:
        check_weights_file(st, "model.pt")  # a .pt must be a torch zip
    assert err.value.code == "invalid_weights"


# ------------------------------------------------------------------ refused weights
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_and_never_run(
    api: TestClient, api_settings: Settings, alice: dict[str, str], tmp_path: Path, protocol: int
) -> None:
    marker = Path(f"/tmp/pwned_{uuid.uuid4().hex}")
    weights = _save(tmp_path / "evil.pt", {"x": Evil(marker)}, pickle_protocol=protocol)
    response = submit(api, alice, SPEC, weights)
    assert response.status_code == 422 and error_of(response) == "unsafe_pickle"
    assert "system" in response.json()["message"]
    assert not marker.exists()
    weights = _save(tmp_path / "eval.pt", {"x": EvalEvil()}, pickle_protocol=protocol)
    response = submit(api, alice, SPEC, weights)
    assert response.status_code == 422 and error_of(response) == "unsafe_pickle"
    assert ".eval," in response.json()["message"]  # builtins or __builtin__ (protocol 2)
    assert _uploads(api_settings) == []


def test_legacy_pickle_and_damaged_files_are_refused(
    api: TestClient, api_settings: Settings, alice: dict[str, str], tmp_path: Path
) -> None:
    legacy = _save(tmp_path / "legacy.pt", small_net().state_dict(),
                   _use_new_zipfile_serialization=False)  # fmt: skip
    plain_zip = tmp_path / "plain.pt"
    with zipfile.ZipFile(plain_zip, "w") as archive:
        archive.writestr("notes.txt", "hello")
    garbage_pickle = tmp_path / "garbage.pt"
    with zipfile.ZipFile(garbage_pickle, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02garbage")
    good = safetensors_weights(tmp_path / "good.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[:-5])
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes(struct.pack("<Q", 10**9) + good[8:])
    not_json = tmp_path / "notjson.safetensors"
    not_json.write_bytes(struct.pack("<Q", 4) + b"abcd")
    cases = {
        legacy: "not a torch zip checkpoint or safetensors",
        plain_zip: "data.pkl",
        garbage_pickle: "not a valid pickle",
        truncated: "bytes of data",
        lying: "header length",
        not_json: "not JSON",
    }
    for path, fragment in cases.items():
        response = submit(api, alice, SPEC, path)
        assert response.status_code == 422, path.name
        assert error_of(response) == "invalid_weights", path.name
        assert fragment in response.json()["message"], (path.name, response.json())
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    response = submit(api, alice, SPEC, empty)
    assert response.status_code == 422 and error_of(response) == "invalid_weights"
    assert _uploads(api_settings) == []


def test_safetensors_header_must_tile_the_data(tmp_path: Path) -> None:
    def write(header: dict[str, object], data: bytes) -> Path:
        raw = json.dumps(header).encode()
        path = tmp_path / f"{uuid.uuid4().hex}.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
        return path

    ok = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    assert check_weights_file(write(ok, b"\0" * 8), "w.safetensors") == "safetensors"
    bad = {
        "overlap": (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            8,
        ),
        "gap": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8),
        "size": ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8),
        "dtype": ({"a": {"dtype": "PY_OBJECT", "shape": [1], "data_offsets": [0, 8]}}, 8),
        "shape": ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, 4),
        "empty": ({"__metadata__": {"format": "pt"}}, 0),
        "meta": ({"__metadata__": {"x": 1}, **ok}, 8),
        "extra": (ok, 9),
    }
    for label, (header, size) in bad.items():
        with pytest.raises(InputError) as err:
            check_weights_file(write(header, b"\0" * size), "w.safetensors")
        assert err.value.code == "invalid_weights", label


def test_pickle_scan_follows_stack_global_names() -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(collections.OrderedDict(a=[1, 2]), protocol=protocol)
        assert scan_pickle(data) == {("collections", "OrderedDict")}, protocol
        with pytest.raises(UnsafePickle):
            scan_pickle(pickle.dumps(os.system, protocol=protocol))
        with pytest.raises(UnsafePickle):
            scan_pickle(pickle.dumps(collections.Counter(), protocol=protocol))
    # STACK_GLOBAL whose names were not just pushed as strings: refused, not guessed.
    computed = b"\x80\x04\x8c\x0bcollections\x94)\x93."
    with pytest.raises(UnsafePickle, match="computed"):
        scan_pickle(computed)
    # Extension-registry opcodes name globals indirectly.
    with pytest.raises(UnsafePickle, match="extension"):
        scan_pickle(b"\x80\x02\x82\x01.")
    assert ("torch", "FloatStorage") in ALLOWED_GLOBALS
    buffer = io.BytesIO()
    torch.save(small_net().state_dict(), buffer, pickle_protocol=4)
    with zipfile.ZipFile(buffer) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        found = scan_pickle(archive.read(name))
    assert {("torch", "FloatStorage"), ("torch", "LongStorage")} <= found


# ------------------------------------------------------------------ datasets
def test_dataset_files_are_checked(
    api: TestClient, api_settings: Settings, alice: dict[str, str], tmp_path: Path
) -> None:
    weights = torch_weights(tmp_path / "w.pt")
    spec = {**SPEC, "dataset": "upload"}
    rng = np.random.default_rng(0)
    x, y = rng.random((6, 1, 4, 4), dtype=np.float32), np.arange(6) % 2

    good_st = tmp_path / "good.safetensors"
    save_numpy({"x_train": x, "y_train": y, "x_val": x, "y_val": y}, str(good_st))
    assert submit(api, alice, spec, weights, good_st).status_code == 201

    missing = tmp_path / "missing.npz"
    np.savez(missing, x_train=x, y_train=y, x_val=x)
    objects = tmp_path / "objects.npz"
    np.savez(objects, x_train=x, y_train=np.array([{"a": 1}] * 6, dtype=object), x_val=x, y_val=y)
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, x_train=x, y_train=y[:5], x_val=x, y_val=y)
    float_labels = tmp_path / "float.npz"
    np.savez(float_labels, x_train=x, y_train=y.astype(np.float32), x_val=x, y_val=y)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"definitely not a zip")
    st_missing = tmp_path / "partial.safetensors"
    save_numpy({"x_train": x, "y_train": y}, str(st_missing))
    text = tmp_path / "data.csv"
    text.write_text("1,2,3\n")
    cases = {
        missing: "y_val",
        objects: "objects",
        mismatch: "must match",
        float_labels: "integer",
        garbage: "npz",
        st_missing: "x_val",
        text: ".npz or .safetensors",
    }
    for path, fragment in cases.items():
        response = submit(api, alice, spec, weights, path)
        assert response.status_code == 422, path.name
        assert error_of(response) == "invalid_dataset", path.name
        assert fragment in response.json()["message"], (path.name, response.json())
    assert len(_uploads(api_settings)) == 2  # the accepted job's weights and dataset


def test_npz_headers_only(tmp_path: Path) -> None:
    data = npz_dataset(tmp_path / "d.npz")
    assert check_dataset_file(data, "d.npz") == "npz"
    assert check_dataset_file(data, "upload") == "npz"  # recognised by content
