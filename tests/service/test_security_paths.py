"""Security: path traversal against artifact names, data roots and upload filenames.

Secrets are planted next to and above the artifact, upload and data roots; no request may read,
write or delete anything outside its root, whether the escape is spelled ``../``, percent-encoded,
absolute, with backslashes or NUL bytes, or goes through a symlink.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.api.inputs import InputError, check_server_dataset
from service.artifacts import PathEscapeError, confined, job_result_dir, remove_tree
from service.settings import Settings
from service.store import InvalidArtifactName, Store, validate_artifact_name
from service.store.models import Artifact
from tests.service.api_helpers import SPEC, error_of, finish, submit, torch_weights
from worker.data import DataPathError, load_dataset, resolve_data_path

SECRET = b"top secret: never served"


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return torch_weights(tmp_path / "model.pt")


@pytest.fixture
def secrets(tmp_path: Path, api_settings: Settings) -> list[Path]:
    """Secret files in and around the roots (the artifact root itself is served from
    ``jobs/<id>/`` only through recorded artifacts)."""
    api_settings.artifact_root.mkdir(parents=True, exist_ok=True)
    paths = [
        tmp_path / "secret",
        tmp_path / "outside" / "secret",
        api_settings.artifact_root / "secret",
        api_settings.artifact_root / "jobs" / "secret",
    ]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(SECRET)
    return paths


@pytest.fixture
def done(
    api: TestClient,
    api_store: Store,
    api_settings: Settings,
    alice: dict[str, str],
    weights: Path,
    secrets: list[Path],
) -> str:
    """A SUCCEEDED job of alice with one real artifact, ``report.json``."""
    job_id = str(submit(api, alice, SPEC, weights).json()["id"])
    finish(api_store, api_settings, job_id, {"report.json": b'{"ok": true}'})
    return job_id


def _raw_get(app: Any, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send ``GET path`` straight to the ASGI app, exactly as given (no client-side
    normalisation of ``..`` or of percent-escapes), and return status and body."""
    raw = path.encode("latin-1", "backslashreplace")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": raw,
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    messages: list[dict[str, Any]] = []

    received = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        if len(received) == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, body


# ------------------------------------------------------------------ artifact names
ARTIFACT_NAMES = [
    "../x",
    "../secret",
    "../../secret",
    "../../../secret",
    "..",
    ".",
    "..%2Fsecret",
    "..%2F..%2Fsecret",
    "%2e%2e%2fsecret",
    "%2E%2E%2F%2E%2E%2Fsecret",
    "%252e%252e%252fsecret",  # double encoded
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "%2F%2Fetc%2Fpasswd",
    "..\\secret",
    "..%5Csecret",
    "..%5C..%5Csecret",
    "C:%5Cwindows%5Cwin.ini",
    "report.json%00",
    "report.json%00.png",
    "%00",
    "report.json%2F..%2F..%2Fsecret",
    "report.json/../../secret",
    ".hidden",
    "~",
    "a" * 129,
    "a" * 10_000,
]


@pytest.mark.parametrize("name", ARTIFACT_NAMES)
def test_artifact_names_never_escape_the_artifact_root(
    api: TestClient, alice: dict[str, str], done: str, name: str
) -> None:
    # Through an HTTP client, which may fold "a/../b" before sending: never the secret.
    response = api.get(f"/v1/jobs/{done}/artifacts/{name}", headers=alice)
    assert response.status_code < 500 and SECRET not in response.content, name
    if response.status_code != 200:  # 200: ".." folded into the job's own URL
        assert error_of(response) in (
            "artifact_not_found",
            "job_not_found",
            "not_found",
            "validation_error",
        ), name
    # Exactly as written, straight to the app: refused.
    status, body = _raw_get(api.app, f"/v1/jobs/{done}/artifacts/{name}", alice)
    assert status in (404, 422) and SECRET not in body, (name, status)


def test_decoded_traversal_in_the_raw_asgi_path_is_not_served(
    api: TestClient, alice: dict[str, str], done: str
) -> None:
    """What a server hands the app after percent-decoding: slashes, dots, NUL, backslashes."""
    for tail in ("../../secret", "../../../secret", "..", "../", "report.json\x00", "..\\secret",
                 "/etc/passwd", "//etc/passwd", "./report.json/../../secret"):  # fmt: skip
        status, body = _raw_get(api.app, f"/v1/jobs/{done}/artifacts/{tail}", alice)
        assert status in (307, 404, 405, 422), (tail, status)  # 307: "x/" redirects to "x"
        assert SECRET not in body, tail
    status, body = _raw_get(api.app, f"/v1/jobs/{done}/artifacts/report.json", alice)
    assert (status, body) == (200, b'{"ok": true}')


@pytest.mark.parametrize("name", [n for n in ARTIFACT_NAMES if "%" not in n] + ["a\x00b", "a/b"])
def test_the_store_refuses_the_same_names(name: str) -> None:
    with pytest.raises(InvalidArtifactName):
        validate_artifact_name(name)


@pytest.mark.parametrize(
    "path",
    ["../secret", "jobs/../../secret", "/etc/passwd", "jobs\\..\\..\\secret", "jobs/x\x00",
     "C:/windows", "", "jobs//x", "./jobs/x"],
)  # fmt: skip
def test_artifact_rows_cannot_point_outside_the_root(
    api_store: Store, done: str, path: str
) -> None:
    with pytest.raises(InvalidArtifactName):
        api_store.add_artifact(done, "evil.txt", path, "0" * 64, 1)


def test_symlinked_artifacts_pointing_outside_are_not_served(
    api: TestClient,
    api_store: Store,
    api_settings: Settings,
    alice: dict[str, str],
    done: str,
    secrets: list[Path],
    tmp_path: Path,
) -> None:
    folder = job_result_dir(api_settings, done)
    (folder / "file-link").symlink_to(secrets[0])
    (folder / "dir-link").symlink_to(secrets[1].parent, target_is_directory=True)
    (folder / "relative-link").symlink_to(Path("..") / ".." / ".." / "secret")
    (folder / "etc-link").symlink_to("/etc/passwd")
    digest = hashlib.sha256(SECRET).hexdigest()
    links = {
        "file-link.txt": f"jobs/{done}/file-link",
        "dir-link.txt": f"jobs/{done}/dir-link/secret",
        "relative-link.txt": f"jobs/{done}/relative-link",
        "etc-link.txt": f"jobs/{done}/etc-link",
    }
    for name, path in links.items():
        api_store.add_artifact(done, name, path, digest, len(SECRET))
    for name in links:
        response = api.get(f"/v1/jobs/{done}/artifacts/{name}", headers=alice)
        assert response.status_code == 404, name
        assert error_of(response) == "artifact_missing"
        assert SECRET not in response.content and b"root:" not in response.content
    # A symlink that stays inside the artifact root is an ordinary file.
    (folder / "inside-link").symlink_to(folder / "report.json")
    report = (folder / "report.json").read_bytes()
    inside_digest = hashlib.sha256(report).hexdigest()
    api_store.add_artifact(done, "inside.json", f"jobs/{done}/inside-link", inside_digest, 12)
    assert api.get(f"/v1/jobs/{done}/artifacts/inside.json", headers=alice).status_code == 200


def test_a_corrupted_artifact_row_is_still_confined(
    api: TestClient,
    api_store: Store,
    api_settings: Settings,
    alice: dict[str, str],
    done: str,
    secrets: list[Path],
) -> None:
    """A row written behind the store's back (no validation) still cannot leave the root."""
    for stored in (
        "../secret",
        "../../secret",
        str(secrets[0]),
        "jobs/../../secret",
        "/etc/passwd",
    ):
        with api_store.engine.begin() as conn:
            conn.execute(
                update(Artifact)
                .where(Artifact.job_id == done, Artifact.name == "report.json")
                .values(path=stored)
            )
        response = api.get(f"/v1/jobs/{done}/artifacts/report.json", headers=alice)
        assert response.status_code == 404, stored
        assert error_of(response) == "artifact_missing", stored
        assert SECRET not in response.content and b"root:" not in response.content, stored


def test_delete_removes_links_not_what_they_point_to(
    api: TestClient,
    api_store: Store,
    api_settings: Settings,
    alice: dict[str, str],
    done: str,
    secrets: list[Path],
) -> None:
    folder = job_result_dir(api_settings, done)
    (folder / "file-link").symlink_to(secrets[0])
    (folder / "dir-link").symlink_to(secrets[1].parent, target_is_directory=True)
    api_store.add_artifact(done, "link.bin", f"jobs/{done}/file-link", "0" * 64, 1)
    api_store.add_artifact(done, "dir.bin", f"jobs/{done}/dir-link/secret", "0" * 64, 1)
    response = api.delete(f"/v1/jobs/{done}", headers=alice)
    assert response.status_code == 204, response.text
    assert not folder.exists()
    for secret in secrets:
        assert secret.read_bytes() == SECRET, secret


def test_confined_and_remove_tree_refuse_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "jobs").mkdir(parents=True)
    (tmp_path / "victim").write_bytes(SECRET)
    (root / "jobs" / "link").symlink_to(tmp_path / "victim")
    for parts in (("..", "victim"), ("/etc/passwd",), ("jobs", "..", "..", "victim"),
                  ("jobs", "link")):  # fmt: skip
        with pytest.raises(PathEscapeError):
            confined(root, *parts)
    with pytest.raises(ValueError):
        remove_tree(tmp_path / "victim", root)
    assert (tmp_path / "victim").read_bytes() == SECRET


def test_job_ids_with_traversal_are_plain_404s(
    api: TestClient, alice: dict[str, str], secrets: list[Path]
) -> None:
    for job_id in ("..", "%2e%2e", "..%2F..%2Fsecret", "%2Fetc%2Fpasswd", "..%5Csecret",
                   "a%00b", "x" * 5000):  # fmt: skip
        for method, tail in (("GET", ""), ("GET", "/artifacts"), ("GET", "/artifacts/secret"),
                             ("DELETE", ""), ("POST", "/cancel")):  # fmt: skip
            response = api.request(method, f"/v1/jobs/{job_id}{tail}", headers=alice)
            assert response.status_code in (404, 405), (job_id, method, tail)
            assert SECRET not in response.content
    for secret in secrets:
        assert secret.read_bytes() == SECRET


# ------------------------------------------------------------------ data roots
@pytest.fixture
def data_root(api_settings: Settings, tmp_path: Path) -> Path:
    """The allowed data root, with a symlink that leads out of it and a symlink loop."""
    root = api_settings.allowed_data_roots[0]
    (tmp_path / "outside" / "cls").mkdir(parents=True)
    (root / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "images" / "escape-inside").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    return root


def _refused_sources(root: Path, tmp_path: Path) -> list[str]:
    return [
        "folder:../../etc",
        "folder:..",
        "folder:../outside",
        "folder:/etc",
        "cifar10:/etc",
        "folder:/",
        "folder:/proc/self/root/etc",
        f"folder:{tmp_path / 'outside'}",
        f"folder:{root}/../outside",
        f"cifar10:{root}/images/../../outside",
        "folder:images/../../outside",
        "folder:./../outside",
        "folder:escape",
        "cifar10:escape/",
        "folder:images/escape-inside",
        "folder:images/escape-inside/cls",
        "folder:loop",
        "folder:images\x00/../../etc",
    ]


def test_data_paths_outside_the_roots_are_refused_at_submit(
    api: TestClient,
    api_settings: Settings,
    alice: dict[str, str],
    weights: Path,
    data_root: Path,
    tmp_path: Path,
) -> None:
    for source in _refused_sources(data_root, tmp_path):
        response = submit(api, alice, {**SPEC, "dataset": source}, weights)
        assert response.status_code == 422, (source, response.text)
        assert error_of(response) == "data_path_not_allowed", (source, response.json())
        message = response.json()["message"]
        assert "outside the allowed data roots" in message, source
        rest = source.partition(":")[2]
        assert str(tmp_path / "outside") not in message.replace(rest, ""), source
    # Percent-escapes are not decoded: "%2e%2e" is a (missing) folder inside the root.
    for source in ("cifar10:%2e%2e/", "folder:%2e%2e%2f%2e%2e%2fetc", "folder:~"):
        response = submit(api, alice, {**SPEC, "dataset": source}, weights)
        assert response.status_code == 422 and error_of(response) == "data_path_not_found"
    # A name longer than the file system allows is simply not there (was a 500).
    response = submit(api, alice, {**SPEC, "dataset": "folder:" + "a" * 900}, weights)
    assert response.status_code == 422 and error_of(response) == "data_path_not_found"
    assert api.get("/v1/jobs", headers=alice).json()["jobs"] == []
    uploads = api_settings.resolved_upload_dir
    assert not uploads.exists() or list(uploads.iterdir()) == []


def test_relative_paths_are_resolved_against_the_roots(
    api: TestClient, alice: dict[str, str], weights: Path, data_root: Path
) -> None:
    for source in ("folder:images", "folder:./images", "folder:images/../images",
                   f"folder:{data_root / 'images'}"):  # fmt: skip
        response = submit(api, alice, {**SPEC, "dataset": source}, weights)
        assert response.status_code == 201, (source, response.text)
    with pytest.raises(InputError) as err:
        check_server_dataset("folder:images", [])
    assert err.value.code == "data_path_not_allowed"


def test_the_worker_confines_data_paths_on_its_own(data_root: Path, tmp_path: Path) -> None:
    """load_dataset refuses the same paths without the API's check (defence in depth)."""
    roots = [data_root]
    for source in _refused_sources(data_root, tmp_path):
        with pytest.raises(DataPathError) as err:
            load_dataset(source, allowed_roots=roots)
        assert "outside the allowed data roots" in str(err.value) or "cannot be resolved" in str(
            err.value
        ), source
        _, _, rest = source.partition(":")
        with pytest.raises(DataPathError):
            resolve_data_path(rest, roots)
    for source in ("folder:images", "cifar10:images"):
        with pytest.raises(DataPathError):
            load_dataset(source, allowed_roots=[])  # no roots: nothing is allowed
    assert resolve_data_path("images", roots) == (data_root / "images").resolve()
    with pytest.raises(DataPathError):
        resolve_data_path("a" * 900, roots)


# ------------------------------------------------------------------ upload filenames
@pytest.mark.parametrize(
    "filename",
    [
        "../../weights.pt",
        "../../../../../../tmp/weights.pt",
        "/etc/weights.pt",
        "/tmp/weights.pt",
        "..\\..\\weights.pt",
        "%2e%2e%2f%2e%2e%2fweights.pt",
        "weights.pt\x00.png",
        "../" * 50 + "weights.pt",
        "a" * 1000 + ".pt",
        "a" * 20_000 + ".pt",  # a part header past the parser's limit: 400
    ],
)
def test_upload_filenames_never_choose_where_files_are_written(
    api: TestClient,
    api_store: Store,
    api_settings: Settings,
    alice: dict[str, str],
    weights: Path,
    tmp_path: Path,
    filename: str,
) -> None:
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    files = {
        "spec": (None, json.dumps(SPEC), "application/json"),
        "weights": (filename, weights.read_bytes(), "application/octet-stream"),
    }
    response = api.post("/v1/jobs", files=files, headers=alice)
    if len(filename) > 16_000:
        assert response.status_code == 400 and error_of(response) == "invalid_multipart"
        assert {p for p in tmp_path.rglob("*") if p.is_file()} - before <= {
            p for p in tmp_path.rglob("api.db*")
        }
        return
    assert response.status_code == 201, response.text
    job = api_store.load_job(response.json()["id"])
    assert job.weights_path == f"{job.id}/weights.pt"
    created = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    uploads = api_settings.resolved_upload_dir.resolve()
    outside = [p for p in created if not p.resolve().is_relative_to(uploads)]
    assert all(p.name.startswith("api.db") for p in outside), outside  # the SQLite files only
    assert [p.resolve() for p in created if p not in outside] == [uploads / job.weights_path]
    for victim in (Path("/tmp/weights.pt"), Path("/etc/weights.pt"), tmp_path / "weights.pt"):
        assert not victim.exists() or victim in before


def test_upload_field_names_with_traversal_are_refused(
    api: TestClient, api_settings: Settings, alice: dict[str, str], weights: Path, tmp_path: Path
) -> None:
    for field in ("../../weights", "/tmp/weights", "weights/../../x", "..\\weights"):
        files = {
            "spec": (None, json.dumps(SPEC), "application/json"),
            field: ("w.pt", weights.read_bytes(), "application/octet-stream"),
        }
        response = api.post("/v1/jobs", files=files, headers=alice)
        assert response.status_code == 422 and error_of(response) == "unexpected_field", field
    assert not (tmp_path / "weights.upload").exists()
    assert not Path("/tmp/weights.upload").exists()
    uploads = api_settings.resolved_upload_dir
    assert not uploads.exists() or list(uploads.iterdir()) == []


def test_a_legal_name_percent_encoded_is_still_served(
    api: TestClient, alice: dict[str, str], done: str
) -> None:
    encoded = "".join(f"%{b:02X}" for b in b"report.json")
    response = api.get(f"/v1/jobs/{done}/artifacts/{encoded}", headers=alice)
    assert response.status_code == 200 and response.content == b'{"ok": true}'
