"""The artifact store: atomic writes, SHA-256 verified reads, staging and publishing a job's
folder, and the API's refusal to serve a corrupted file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.artifacts import (
    ArtifactCorrupted,
    ArtifactInfo,
    ArtifactStore,
    LocalArtifactStore,
    PathEscapeError,
    artifact_store,
    job_result_dir,
)
from service.settings import Settings
from service.store import InvalidArtifactName, Store
from tests.service.api_helpers import SPEC, error_of, finish, submit, torch_weights

JOB = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def files(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_settings_give_a_local_store(tmp_path: Path) -> None:
    store = artifact_store(Settings(artifact_root=tmp_path / "a"))
    assert isinstance(store, ArtifactStore) and isinstance(store, LocalArtifactStore)
    assert store.root == tmp_path / "a"


def test_put_bytes_and_file_then_read_verified(files: LocalArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several copy chunks
    info = files.put_bytes(JOB, "model.safetensors", data)
    assert info == ArtifactInfo(
        f"jobs/{JOB}/model.safetensors", hashlib.sha256(data).hexdigest(), len(data)
    )
    path = files.open_verified(info.path, info.sha256)
    assert path == files.path_of(info.path) and path.read_bytes() == data
    assert files.info(JOB, "model.safetensors") == info
    assert files.info(JOB, "absent.bin") is None

    source = tmp_path / "report.json"
    source.write_text('{"ok": true}')
    copied = files.put_file(JOB, "report.json", source)
    assert copied.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert files.open_verified(copied.path, copied.sha256.upper()).read_bytes() == b'{"ok": true}'
    assert _leftovers(files.job_dir(JOB)) == []  # no temporary files left behind


def test_tampered_file_is_corrupted(files: LocalArtifactStore) -> None:
    info = files.put_bytes(JOB, "model.zip", b"PK" + bytes(range(256)) * 8)
    path = files.path_of(info.path)
    damaged = bytearray(path.read_bytes())
    damaged[100] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(ArtifactCorrupted) as caught:
        files.open_verified(info.path, info.sha256)
    assert caught.value.code == "artifact_corrupted"
    assert caught.value.expected == info.sha256 and caught.value.actual != info.sha256
    path.write_bytes(bytes(damaged[:10]))  # truncated
    with pytest.raises(ArtifactCorrupted):
        files.open_verified(info.path, info.sha256)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        files.open_verified(info.path, info.sha256)


def test_a_failure_mid_write_leaves_the_old_file_and_no_partial_one(
    files: LocalArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = files.put_bytes(JOB, "model.onnx", b"old version")

    def broken_fsync(fd: int) -> None:  # the data is written, the flush to disk fails
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        files.put_bytes(JOB, "model.onnx", b"new version, never complete" * 1000)
    with pytest.raises(OSError, match="Input/output"):
        files.put_bytes(JOB, "model.torchscript.pt", b"x" * 100)
    monkeypatch.undo()
    assert files.open_verified(old.path, old.sha256).read_bytes() == b"old version"
    assert not files.path_of(f"jobs/{JOB}/model.torchscript.pt").exists()
    assert _leftovers(files.job_dir(JOB)) == []


def test_a_source_that_fails_mid_copy_leaves_nothing(
    files: LocalArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.artifacts as module

    source = tmp_path / "big.bin"
    source.write_bytes(b"a" * 64)
    monkeypatch.setattr(module, "_CHUNK", 16)
    real_open = Path.open
    reads = 0

    class Flaky:
        def __init__(self, handle: object) -> None:
            self.handle = handle

        def __enter__(self) -> Flaky:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()  # type: ignore[attr-defined]

        def read(self, n: int) -> bytes:
            nonlocal reads
            reads += 1
            if reads == 3:
                raise OSError("the source went away")
            return self.handle.read(n)  # type: ignore[attr-defined,no-any-return]

    def flaky_open(self: Path, mode: str = "r", *args: object, **kwargs: object) -> object:
        handle = real_open(self, mode, *args, **kwargs)  # type: ignore[call-overload]
        return Flaky(handle) if self == source else handle

    monkeypatch.setattr(Path, "open", flaky_open)
    with pytest.raises(OSError, match="went away"):
        files.put_file(JOB, "model.zip", source)
    monkeypatch.undo()
    assert reads == 3
    assert not (files.job_dir(JOB) / "model.zip").exists()
    assert _leftovers(files.job_dir(JOB)) == []


def test_paths_never_leave_the_root(files: LocalArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("x")
    for bad in ("../secret", "/etc/passwd", "jobs/../../secret", "jobs//x", ""):
        with pytest.raises((InvalidArtifactName, PathEscapeError)):
            files.path_of(bad)
    for name in ("../x", "a/b", ".."):
        with pytest.raises(InvalidArtifactName):
            files.put_bytes(JOB, name, b"x")
    with pytest.raises(InvalidArtifactName):
        files.put_bytes("../jobs", "x", b"x")
    files.root.mkdir(parents=True, exist_ok=True)
    (files.root / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(PathEscapeError):
        files.open_verified("link", hashlib.sha256(b"x").hexdigest())


def test_staging_commit_replaces_the_job_folder_whole(files: LocalArtifactStore) -> None:
    first = files.staging(JOB)
    (first / "model.zip").write_bytes(b"first")
    files.commit(JOB, first)
    assert not first.exists()
    assert (files.job_dir(JOB) / "model.zip").read_bytes() == b"first"

    abandoned = files.staging(JOB)  # a worker that lost its lease left this behind
    (abandoned / "junk").write_bytes(b"junk")
    second = files.staging(JOB)  # the next attempt removes it
    assert not abandoned.exists()
    (second / "sub").mkdir()
    (second / "sub" / "a.txt").write_text("a")
    (second / "report.json").write_text("{}")
    files.commit(JOB, second)
    assert sorted(p.name for p in files.job_dir(JOB).iterdir()) == ["report.json", "sub"]

    third = files.staging(JOB)
    (third / "x").write_text("x")
    files.discard(third)
    assert not third.exists()
    assert _leftovers(files.root / "jobs") == []

    files.delete_job(JOB)
    assert not files.job_dir(JOB).exists()
    files.delete_job(JOB)  # idempotent


# ------------------------------------------------------------------ the REST API


def test_api_refuses_to_serve_a_corrupted_artifact(
    api: TestClient,
    api_store: Store,
    api_settings: Settings,
    alice: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    weights = torch_weights(tmp_path / "model.pt")
    job_id = str(submit(api, alice, SPEC, weights).json()["id"])
    finish(api_store, api_settings, job_id, {"model.zip": b"PK" + b"z" * 500, "a.json": b"{}"})
    url = f"/v1/jobs/{job_id}/artifacts/model.zip"
    assert api.get(url, headers=alice).content == b"PK" + b"z" * 500

    path = job_result_dir(api_settings, job_id) / "model.zip"
    path.write_bytes(b"PK" + b"y" * 500)  # same size, other bytes
    with caplog.at_level("ERROR", logger="service.api.routes_artifacts"):
        response = api.get(url, headers=alice)
    assert response.status_code == 500 and error_of(response) == "artifact_corrupted"
    assert "model.zip" in response.json()["message"]
    assert any("corrupted" in r.getMessage() for r in caplog.records)
    # the other artifact is still served, and a missing file is a 404 as before
    assert api.get(f"/v1/jobs/{job_id}/artifacts/a.json", headers=alice).status_code == 200
    path.unlink()
    response = api.get(url, headers=alice)
    assert response.status_code == 404 and error_of(response) == "artifact_missing"

    assert api.delete(f"/v1/jobs/{job_id}", headers=alice).status_code == 204
    assert not job_result_dir(api_settings, job_id).exists()
