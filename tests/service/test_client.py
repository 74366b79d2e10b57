"""The Python client, against the app through the TestClient transport."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.artifacts import job_result_dir
from service.client import DEFAULT_URL, ClientError, DigestMismatch, RankoptClient
from service.settings import Settings
from service.store import Store
from tests.service.api_helpers import SPEC, finish, npz_dataset, torch_weights


@pytest.fixture
def client(api: TestClient, alice: dict[str, str]) -> RankoptClient:
    key = alice["Authorization"].split()[1]
    return RankoptClient("http://testserver", key, client=api)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return torch_weights(tmp_path / "model.pt")


def test_submit_get_list_cancel(client: RankoptClient, weights: Path, tmp_path: Path) -> None:
    job = client.submit(SPEC, weights)
    assert job["status"] == "QUEUED" and client.get(job["id"]) == job
    upload = client.submit({**SPEC, "dataset": "upload"}, weights, npz_dataset(tmp_path / "d.npz"))
    page = client.list(limit=1)
    assert [j["id"] for j in page["jobs"]] == [upload["id"]] and page["next_cursor"]
    assert [j["id"] for j in client.iter_jobs(page_size=1)] == [upload["id"], job["id"]]
    assert client.cancel(job["id"])["status"] == "CANCELLED"
    assert [j["id"] for j in client.list(status="CANCELLED")["jobs"]] == [job["id"]]
    assert client.trials(job["id"]) == []
    again = client.submit(SPEC, weights, idempotency_key="k1")
    assert client.submit(SPEC, weights, idempotency_key="k1")["id"] == again["id"]


def test_errors_carry_status_and_code(
    client: RankoptClient, api: TestClient, weights: Path
) -> None:
    with pytest.raises(ClientError) as err:
        client.get("0" * 32)
    assert (err.value.status, err.value.code) == (404, "job_not_found")
    job = client.submit(SPEC, weights)
    with pytest.raises(ClientError) as err:
        client.result(job["id"])
    assert (err.value.status, err.value.code) == (409, "not_finished")
    with pytest.raises(ClientError) as err:
        client.submit({"arch": "x"}, weights)
    assert err.value.code == "invalid_spec" and "arch" in err.value.message
    stranger = RankoptClient("http://testserver", "rk_nobody", client=api)
    with pytest.raises(ClientError) as err:
        stranger.list()
    assert (err.value.status, err.value.code) == (401, "unauthorized")


def test_finished_job_result_events_download_delete(
    client: RankoptClient,
    api_store: Store,
    api_settings: Settings,
    weights: Path,
    tmp_path: Path,
) -> None:
    job_id = client.submit(SPEC, weights)["id"]
    files = {"model.zip": b"PK" + b"x" * 5000, "report.json": b"{}"}
    finish(api_store, api_settings, job_id, files)

    events = list(client.events(job_id))
    assert [e["event"] for e in events] == ["progress", "end"]
    assert events[-1]["data"]["status"] == "SUCCEEDED" and events[-1]["id"] == "2"

    result = client.result(job_id)
    assert result["final"]["accuracy"] == 0.9
    assert [t["number"] for t in client.trials(job_id)] == [0, 1, 2]
    listed = {a["name"]: a for a in client.artifacts(job_id)}
    assert listed["model.zip"]["sha256"] == hashlib.sha256(files["model.zip"]).hexdigest()

    out = tmp_path / "out"
    out.mkdir()
    path = client.download(job_id, "model.zip", out)
    assert path == out / "model.zip" and path.read_bytes() == files["model.zip"]
    path = client.download(job_id, "report.json", tmp_path / "nested" / "r.json")
    assert path.read_bytes() == b"{}"

    client.delete(job_id)
    with pytest.raises(ClientError) as err:
        client.get(job_id)
    assert err.value.code == "job_not_found"


def test_download_digest_mismatch_raises_and_leaves_nothing(tmp_path: Path) -> None:
    """Bytes that do not match the announced digest (damaged on the way) are refused."""
    announced = hashlib.sha256(b"original bytes").hexdigest()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=b"tampered bytes", headers={"X-Content-SHA256": announced}
        )

    client = RankoptClient("http://x", "rk_k", transport=httpx.MockTransport(handler))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DigestMismatch) as err:
        client.download("a" * 32, "model.zip", out)
    assert err.value.code == "digest_mismatch" and isinstance(err.value, ClientError)
    assert list(out.iterdir()) == []


def test_download_of_a_file_damaged_on_the_server_is_refused(
    client: RankoptClient,
    api_store: Store,
    api_settings: Settings,
    weights: Path,
    tmp_path: Path,
) -> None:
    """The server checks the stored file's digest before sending it (500 artifact_corrupted)."""
    job_id = client.submit(SPEC, weights)["id"]
    finish(api_store, api_settings, job_id, {"model.zip": b"original bytes"})
    (job_result_dir(api_settings, job_id) / "model.zip").write_bytes(b"tampered bytes")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ClientError) as err:
        client.download(job_id, "model.zip", out)
    assert err.value.code == "artifact_corrupted"
    assert list(out.iterdir()) == []


def test_download_without_a_digest_is_refused(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"data")

    client = RankoptClient("http://x", "rk_k", transport=httpx.MockTransport(handler))
    with pytest.raises(ClientError) as err:
        client.download("a" * 32, "model.zip", tmp_path)
    assert err.value.code == "missing_digest"
    assert list(tmp_path.iterdir()) == []


def test_sse_parsing_and_non_json_errors() -> None:
    body = (
        b'retry: 2000\n\n: heartbeat\n\nevent: progress\nid: 1\ndata: {"a": 1}\n\n'
        b"data: plain\ndata: text\n\nevent: end\ndata: {}\n\n"
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            assert request.headers["Authorization"] == "Bearer rk_k"
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(502, text="Bad Gateway\nfrom the proxy")

    client = RankoptClient("http://x", "rk_k", transport=httpx.MockTransport(handler))
    events = list(client.events("j"))
    assert events == [
        {"event": "progress", "id": "1", "data": {"a": 1}},
        {"event": "message", "id": None, "data": "plain\ntext"},
        {"event": "end", "id": None, "data": {}},
    ]
    with pytest.raises(ClientError) as err:
        client.get("j")
    assert (err.value.status, err.value.code, err.value.message) == (502, "http_502", "Bad Gateway")


def test_unreachable_service_is_a_client_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = RankoptClient("http://127.0.0.1:9", "rk_k", transport=httpx.MockTransport(handler))
    with pytest.raises(ClientError) as err:
        client.list()
    assert err.value.status == 0 and err.value.code == "connection_error"


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANKOPT_API_KEY", raising=False)
    monkeypatch.delenv("RANKOPT_URL", raising=False)
    with pytest.raises(ValueError, match="RANKOPT_API_KEY"):
        RankoptClient.from_env()
    monkeypatch.setenv("RANKOPT_API_KEY", "rk_abc")
    with RankoptClient.from_env() as client:
        assert client.url == DEFAULT_URL
    monkeypatch.setenv("RANKOPT_URL", "http://api.example:9000/")
    with RankoptClient.from_env() as client:
        assert client.url == "http://api.example:9000"
