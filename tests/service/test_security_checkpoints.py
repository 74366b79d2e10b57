"""Security: malicious and broken weight uploads.

Every hostile checkpoint POSTed to ``/v1/jobs`` is refused with a 4xx whose JSON ``{code,
message}`` says what is wrong, its upload is removed, and the code it carries never runs (a
marker file under ``tmp_path`` never appears). Files that are well formed but do not fit the
architecture (another model's state_dict, int tensors for float ones, a tensor larger than its
storage) may pass the API, which has no torch; the worker then fails the job with
``invalid_weights`` and reads them only with safetensors or ``torch.load(weights_only=True)``, so
nothing in them runs either. The worker's own defence is also tested with the hostile files
the API refuses, stored behind the API's back.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from service.settings import Settings
from service.store import JobStatus, Store
from tests.service.api_helpers import error_of, submit
from worker.pool import Worker
from worker.weights import WeightsError, read_state_dict
from worker.zoo import get_model

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")

#: A job the worker can prepare quickly: tinycnn (1x8x8 input) on the built-in digits.
WORKER_SPEC: dict[str, Any] = {
    "arch": "rankopt:tinycnn",
    "dataset": "digits",
    "trials": 1,
    "epochs_per_trial": 1,
    "final_epochs": 0,
}


# ------------------------------------------------------------------ payloads
class SystemCall:
    """Unpickling runs ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class EvalCall:
    """Unpickling runs ``eval("open(<marker>, 'w').write('pwned')")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class ExecCall(EvalCall):
    """Unpickling runs ``exec(...)`` writing the marker."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class PopenCall(SystemCall):
    """Unpickling runs ``subprocess.Popen(["touch", <marker>])``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (subprocess.Popen, (["touch", str(self.marker)],))


def tinycnn_state() -> dict[str, torch.Tensor]:
    model = get_model("rankopt:tinycnn", num_classes=10, in_channels=1)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def _torch_save(path: Path, obj: object, **kwargs: Any) -> Path:
    torch.save(obj, path, **kwargs)  # type: ignore[arg-type]
    return path


def _torch_zip(path: Path, pickle_bytes: bytes, extra: dict[str, bytes] | None = None) -> Path:
    """A torch-style zip (``archive/data.pkl`` + records) with ``pickle_bytes`` as its pickle."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    with (
        zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source,
        zipfile.ZipFile(path, "w") as target,
    ):
        for info in source.infolist():
            data = pickle_bytes if info.filename.endswith("/data.pkl") else source.read(info)
            target.writestr(info, data)
        for name, data in (extra or {}).items():
            target.writestr(name, data)
    return path


def _stack_global_system(marker: Path) -> bytes:
    """Protocol 4: ``posix.system`` named by two strings and ``STACK_GLOBAL``, then called."""
    command = f"touch {marker}".encode()
    return (
        b"\x80\x04"  # PROTO 4
        + b"\x8c\x05posix\x94"  # SHORT_BINUNICODE 'posix', MEMOIZE
        + b"\x8c\x06system\x94"  # SHORT_BINUNICODE 'system', MEMOIZE
        + b"\x93\x94"  # STACK_GLOBAL, MEMOIZE
        + b"\x8c" + bytes([len(command)]) + command + b"\x94"
        + b"\x85\x94R\x94."  # TUPLE1, MEMOIZE, REDUCE, MEMOIZE, STOP
    )  # fmt: skip


def _memo_stack_global(marker: Path) -> bytes:
    """``STACK_GLOBAL`` fed from the memo: allowed names stored, then ``os``/``system`` fetched
    with ``BINGET`` after an allowed global was built from other memo slots."""
    command = f"touch {marker}".encode()
    return (
        b"\x80\x04"
        + b"\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94"  # memo 0, 1, 2
        + b"\x8c\x02os\x94\x8c\x06system\x94"  # memo 3, 4
        + b"0"  # POP
        + b"h\x03h\x04\x93"  # BINGET 3, BINGET 4, STACK_GLOBAL -> os.system
        + b"\x8c" + bytes([len(command)]) + command
        + b"\x85R."
    )  # fmt: skip


def _inst_system(marker: Path) -> bytes:
    """Protocol 0: ``INST os system`` calls ``os.system`` while building the instance."""
    return b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n."


def _safetensors(path: Path, header: dict[str, Any] | bytes, data: bytes) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _utf8_flagged_zip(path: Path) -> Path:
    """A torch zip with an entry whose name claims UTF-8 but is not."""
    _torch_zip(path, pickle.dumps({"w": 1}, protocol=2), extra={"archive/\u00e9x": b"x"})
    raw = path.read_bytes().replace("\u00e9".encode(), b"\xff\xfe")
    path.write_bytes(raw)
    return path


def _zip_bomb(path: Path) -> Path:
    """A zip whose data.pkl inflates to 65 MiB (a state_dict's pickle is a few KiB)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02" + b"N" * (65 * 1024 * 1024) + b".")
    return path


@dataclass(frozen=True)
class Hostile:
    """A weights upload the API must refuse: how to build it and what the answer says."""

    label: str
    build: Callable[[Path, Path], Path]  # (folder, marker) -> the file to upload
    code: str
    fragment: str
    status: int = 422
    pickled: bool = False  # carries a code-running pickle (also fed to read_state_dict)


_F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

HOSTILE: list[Hostile] = [
    Hostile(
        "torch-zip-os-system",
        lambda d, m: _torch_save(d / "model.pt", {"w": torch.zeros(2), "x": SystemCall(m)}),
        "unsafe_pickle", "posix.system", pickled=True,
    ),
    Hostile(
        "builtins-eval",
        lambda d, m: _torch_save(d / "model.pt", {"x": EvalCall(m)}, pickle_protocol=2),
        "unsafe_pickle", ".eval", pickled=True,
    ),
    Hostile(
        "builtins-exec",
        lambda d, m: _torch_save(d / "model.pth", {"x": ExecCall(m)}, pickle_protocol=4),
        "unsafe_pickle", "builtins.exec", pickled=True,
    ),
    Hostile(
        "subprocess-popen",
        lambda d, m: _torch_save(d / "model.pt", {"x": PopenCall(m)}, pickle_protocol=4),
        "unsafe_pickle", "subprocess.Popen", pickled=True,
    ),
    Hostile(
        "legacy-raw-pickle",
        lambda d, m: _write(d / "model.pt", pickle.dumps({"x": SystemCall(m)}, protocol=2)),
        "invalid_weights", "legacy pickled checkpoints are refused", pickled=True,
    ),
    Hostile(
        "legacy-raw-pickle-unnamed",
        lambda d, m: _write(d / "weights", pickle.dumps({"x": SystemCall(m)}, protocol=4)),
        "invalid_weights", "not a torch zip checkpoint or safetensors", pickled=True,
    ),
    Hostile(
        "legacy-torch-format",
        lambda d, m: _torch_save(
            d / "model.bin", {"x": SystemCall(m)}, _use_new_zipfile_serialization=False
        ),
        "invalid_weights", "legacy pickled checkpoints are refused", pickled=True,
    ),
    Hostile(
        "stack-global-posix-system",
        lambda d, m: _torch_zip(d / "model.pt", _stack_global_system(m)),
        "unsafe_pickle", "posix.system", pickled=True,
    ),
    Hostile(
        "stack-global-from-memo",
        lambda d, m: _torch_zip(d / "model.pt", _memo_stack_global(m)),
        "unsafe_pickle", "os.system", pickled=True,
    ),
    Hostile(
        "inst-os-system",
        lambda d, m: _torch_zip(d / "model.pt", _inst_system(m)),
        "unsafe_pickle", "os.system", pickled=True,
    ),
    Hostile(
        "extension-registry",
        lambda d, m: _torch_zip(d / "model.pt", b"\x80\x02\x82\x01)R."),
        "unsafe_pickle", "extension registry", pickled=True,
    ),
    Hostile(
        "whole-module-pickled",
        lambda d, m: _torch_save(d / "model.pt", torch.nn.Linear(2, 2)),
        "unsafe_pickle", "torch.nn.modules.linear.Linear",
    ),
    Hostile(
        "zip-slip-parent",
        lambda d, m: _torch_zip(
            d / "model.pt", pickle.dumps({}, protocol=2), extra={"../../evil.sh": b"echo pwned"}
        ),
        "invalid_weights", "'../../evil.sh' outside its 'archive/' folder",
    ),
    Hostile(
        "zip-slip-absolute",
        lambda d, m: _torch_zip(
            d / "model.pt", pickle.dumps({}, protocol=2), extra={"/tmp/evil.sh": b"echo pwned"}
        ),
        "invalid_weights", "'/tmp/evil.sh' outside",
    ),
    Hostile(
        "zip-slip-inner-dotdot",
        lambda d, m: _torch_zip(
            d / "model.pt", pickle.dumps({}, protocol=2), extra={"archive/../../x": b"x"}
        ),
        "invalid_weights", "outside its 'archive/' folder",
    ),
    Hostile(
        "zip-slip-backslash",
        lambda d, m: _torch_zip(
            d / "model.pt", pickle.dumps({}, protocol=2), extra={"archive\\..\\..\\x": b"x"}
        ),
        "invalid_weights", "outside its 'archive/' folder",
    ),
    Hostile(
        "zip-slip-dotdot-root",
        lambda d, m: _zip_of(d / "model.pt", {"../data.pkl": pickle.dumps({}, protocol=2)}),
        "invalid_weights", "outside its '../' folder",
    ),
    Hostile(
        "zip-bomb-pickle", lambda d, m: _zip_bomb(d / "model.pt"),
        "invalid_weights", "data.pkl is 68157443 bytes",
    ),
    Hostile(
        "zip-name-not-utf8", lambda d, m: _utf8_flagged_zip(d / "model.pt"),
        "invalid_weights", "not a readable zip archive",
    ),
    Hostile(
        "safetensors-oversized-tensor",
        lambda d, m: _safetensors(
            d / "w.safetensors",
            {"w": {"dtype": "F32", "shape": [1_000_000], "data_offsets": [0, 4_000_000]}},
            b"\0" * 8,
        ),
        "invalid_weights", "the tensors take 4000000 bytes, but the file holds 8",
    ),
    Hostile(
        "safetensors-overlapping-offsets",
        lambda d, m: _safetensors(
            d / "w.safetensors",
            {"a": _F32, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
            b"\0" * 8,
        ),
        "invalid_weights", "overlaps another tensor",
    ),
    Hostile(
        "safetensors-negative-shape",
        lambda d, m: _safetensors(
            d / "w.safetensors",
            {"a": {"dtype": "F32", "shape": [-2, -1], "data_offsets": [0, 8]}},
            b"\0" * 8,
        ),
        "invalid_weights", "tensor 'a' has no valid shape",
    ),
    Hostile(
        "safetensors-negative-offsets",
        lambda d, m: _safetensors(
            d / "w.safetensors",
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}},
            b"\0" * 8,
        ),
        "invalid_weights", "tensor 'a' has no valid data_offsets",
    ),
    Hostile(
        "safetensors-unknown-dtype",
        lambda d, m: _safetensors(
            d / "w.safetensors",
            {"a": {"dtype": "PY_OBJECT", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 8,
        ),
        "invalid_weights", "unsupported dtype 'PY_OBJECT'",
    ),
    Hostile(
        "safetensors-huge-header-length",
        lambda d, m: _write(d / "w.safetensors", struct.pack("<Q", 2**40) + b"{}" + b"\0" * 8),
        "invalid_weights", "header length 1099511627776 exceeds the file",
    ),
    Hostile(
        "safetensors-nested-json",
        lambda d, m: _safetensors(d / "w.safetensors", b"[" * 100_000 + b"]" * 100_000, b""),
        "invalid_weights", "nested too deeply",
    ),
    Hostile(
        "safetensors-5000-digit-int",
        lambda d, m: _safetensors(
            d / "w.safetensors",
            b'{"a":{"dtype":"F32","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,8]}}',
            b"\0" * 8,
        ),
        "invalid_weights", "header is not JSON",
    ),
    Hostile(
        "safetensors-12001-dims",
        lambda d, m: _safetensors(
            d / "w.safetensors",
            {"a": {"dtype": "F32", "shape": [2**62] * 12_000 + [0], "data_offsets": [0, 0]}},
            b"",
        ),
        "invalid_weights", "has 12001 dimensions",
    ),
    Hostile(
        "over-the-upload-limit",
        lambda d, m: _write(d / "w.safetensors", b"\0" * (256 * 1024 + 1)),
        "upload_too_large", "RANKOPT_MAX_UPLOAD_BYTES", status=413,
    ),
]  # fmt: skip


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


# ------------------------------------------------------------------ fixtures and helpers
@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """A path that only a payload's code would create."""
    path = tmp_path / f"pwned-{uuid.uuid4().hex}"
    yield path
    assert not path.exists(), "a payload ran"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    folder = tmp_path / "payloads"
    folder.mkdir()
    return folder


def _uploaded(settings: Settings) -> list[Path]:
    root = settings.resolved_upload_dir
    return sorted(root.rglob("*")) if root.exists() else []


def _drain(settings: Settings, store: Store) -> None:
    """Let an in-process worker run every queued job's prepare phase (and whatever follows)."""
    worker = Worker(settings, store, worker_id="security-worker", device="cpu", poll_interval=0.01)
    try:
        for _ in range(50):
            if not worker.run_once():
                return
        raise AssertionError("the worker kept finding work")
    finally:
        worker.close()


# ------------------------------------------------------------------ refused at submit
def test_at_least_ten_distinct_hostile_uploads() -> None:
    assert len({case.label for case in HOSTILE}) == len(HOSTILE) >= 10
    assert sum(case.pickled for case in HOSTILE) >= 5


@pytest.mark.parametrize("case", HOSTILE, ids=[case.label for case in HOSTILE])
def test_hostile_weights_are_refused_and_never_run(
    api: TestClient,
    api_settings: Settings,
    api_store: Store,
    alice: dict[str, str],
    files: Path,
    marker: Path,
    case: Hostile,
) -> None:
    weights = case.build(files, marker)
    response = submit(api, alice, WORKER_SPEC, weights)
    assert response.status_code == case.status, response.text
    assert error_of(response) == case.code, response.json()
    assert case.fragment in response.json()["message"], response.json()
    assert _uploaded(api_settings) == [], "the refused upload was left behind"
    assert api.get("/v1/jobs", headers=alice).json()["jobs"] == []
    _drain(api_settings, api_store)  # nothing was queued; nothing must run
    assert not marker.exists()


@pytest.mark.parametrize(
    "case", [c for c in HOSTILE if c.pickled], ids=[c.label for c in HOSTILE if c.pickled]
)
def test_read_state_dict_refuses_code_running_pickles(
    files: Path, marker: Path, case: Hostile
) -> None:
    weights = case.build(files, marker)
    as_pt = weights.with_suffix(".pt") if weights.suffix != ".pt" else weights
    if as_pt != weights:
        weights.rename(as_pt)
    with pytest.raises(WeightsError, match="not a plain PyTorch state_dict") as err:
        read_state_dict(as_pt)
    assert "refused" in str(err.value)
    assert not marker.exists()


def test_worker_refuses_hostile_files_stored_behind_the_apis_back(
    api_settings: Settings, api_store: Store, files: Path, marker: Path
) -> None:
    """Defence in depth: files the API refuses, queued directly, fail as invalid_weights unread."""
    owner = api_store.create_api_key("direct")[1]
    jobs = []
    for case in HOSTILE:
        if not (case.pickled or case.label.startswith("zip-slip")):
            continue
        built = case.build(files, marker)
        folder = api_settings.resolved_upload_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        target = folder / "weights.pt"
        target.write_bytes(built.read_bytes())
        relative = target.relative_to(api_settings.resolved_upload_dir).as_posix()
        job = api_store.create_job(owner.id, WORKER_SPEC, relative, trials_total=1)
        jobs.append((case.label, job.id))
    assert len(jobs) >= 10
    _drain(api_settings, api_store)
    for label, job_id in jobs:
        job = api_store.load_job(job_id)
        assert (job.status, job.error_code) == (JobStatus.FAILED, "invalid_weights"), label
        assert job.error_message is not None and "weights" in job.error_message, label
        assert str(api_settings.resolved_upload_dir) not in job.error_message, label
    assert not marker.exists()


# ------------------------------------------------------------------ accepted, then invalid_weights
def _int_tensors(d: Path, m: Path) -> Path:
    state = {k: torch.ones(v.shape, dtype=torch.int32) for k, v in tinycnn_state().items()}
    return _torch_save(d / "ints.pt", state)


def _wrong_shape(d: Path, m: Path) -> Path:
    state = tinycnn_state()
    state["classifier.weight"] = torch.zeros(7, 32)
    save_file(state, str(d / "shape.safetensors"))
    return d / "shape.safetensors"


def _other_model(d: Path, m: Path) -> Path:
    model = get_model("rankopt:lenet5", num_classes=10, in_channels=1)
    return _torch_save(d / "lenet.pt", model.state_dict())


def _not_finite(d: Path, m: Path) -> Path:
    state = tinycnn_state()
    state["features.0.bias"] = torch.full((16,), float("nan"))
    save_file(state, str(d / "nan.safetensors"))
    return d / "nan.safetensors"


def _not_tensors(d: Path, m: Path) -> Path:
    return _torch_save(d / "ints.pt", {**tinycnn_state(), "extra": [1, 2, 3]})


def _larger_than_storage(d: Path, m: Path) -> Path:
    """A torch zip whose tensor claims 10^7 elements on a 7777-element storage."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(7777)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source:
        pkl = source.read("archive/data.pkl")
        size = pkl.rindex(b"Ma\x1e")  # BININT2 7777: the size tuple, after the storage's numel
        patched = pkl[:size] + b"J" + struct.pack("<i", 10**7) + pkl[size + 3 :]
        path = d / "oversized.pt"
        with zipfile.ZipFile(path, "w") as target:
            for info in source.infolist():
                is_pickle = info.filename.endswith("/data.pkl")
                target.writestr(info, patched if is_pickle else source.read(info))
    return path


def _wrong_dtype_safetensors(d: Path, m: Path) -> Path:
    state = {k: v.to(torch.int64) for k, v in tinycnn_state().items()}
    save_file(state, str(d / "ints.safetensors"))
    return d / "ints.safetensors"


MISFITS: list[tuple[str, Callable[[Path, Path], Path], str]] = [
    ("int-tensors-torch", _int_tensors, "has dtype torch.int32, expected torch.float32"),
    ("int-tensors-safetensors", _wrong_dtype_safetensors, "has dtype torch.int64"),
    ("wrong-shape", _wrong_shape, "has shape (7, 32), the architecture expects (10, 32)"),
    ("other-model", _other_model, "weights do not fit the architecture"),
    ("nan-weights", _not_finite, "NaN or infinite"),
    ("not-only-tensors", _not_tensors, "must hold a dict of name → tensor"),
    ("tensor-larger-than-storage", _larger_than_storage, "not a plain PyTorch state_dict"),
]


def test_valid_files_that_do_not_fit_fail_the_job_as_invalid_weights(
    api: TestClient,
    api_settings: Settings,
    api_store: Store,
    alice: dict[str, str],
    files: Path,
    marker: Path,
) -> None:
    """The API (no torch) accepts these; the worker fails each job with a clear message and
    the code the API gives refused weights, invalid_weights."""
    submitted = {}
    for label, build, _ in MISFITS:
        response = submit(api, alice, WORKER_SPEC, build(files, marker))
        assert response.status_code == 201, (label, response.text)
        submitted[label] = response.json()["id"]
    _drain(api_settings, api_store)
    for label, _, fragment in MISFITS:
        response = api.get(f"/v1/jobs/{submitted[label]}", headers=alice)
        body = response.json()
        assert body["status"] == "FAILED", (label, body)
        assert body["error"]["code"] == "invalid_weights", (label, body)
        message = body["error"]["message"]
        assert fragment in message and "rankopt:tinycnn" in message, (label, message)
        assert str(api_settings.resolved_upload_dir) not in message, label
    assert not marker.exists()
