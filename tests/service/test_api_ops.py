"""REST API, operations: server-sent events, metrics, health, OpenAPI, error bodies, and the
API's independence from torch."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.settings import Settings
from service.store import JobStatus, Store, make_engine
from tests.service.api_helpers import SPEC, error_of, finish, submit, torch_weights

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return torch_weights(tmp_path / "model.pt")


def _events(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs of an SSE body; comments become ('comment', text)."""
    out = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line]
        if not lines:
            continue
        if all(line.startswith(":") for line in lines):
            out.append(("comment", lines[0][1:].strip()))
            continue
        fields = dict(line.split(": ", 1) for line in lines if ": " in line)
        if "event" in fields:
            out.append((fields["event"], fields.get("data", "")))
    return out


# ------------------------------------------------------------------ events
def test_events_of_a_finished_job_end_at_once(
    api: TestClient, api_store: Store, api_settings: Settings, alice: dict[str, str],
    weights: Path,
) -> None:  # fmt: skip
    job_id = submit(api, alice, SPEC, weights).json()["id"]
    finish(api_store, api_settings, job_id)
    response = api.get(f"/v1/jobs/{job_id}/events", headers=alice)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    assert [e for e, _ in events] == ["progress", "end"]
    assert '"status":"SUCCEEDED"' in events[-1][1]


def test_events_follow_a_job_until_it_ends(
    api: TestClient, api_store: Store, alice: dict[str, str], weights: Path
) -> None:
    job = submit(api, alice, SPEC, weights).json()
    owner = api_store.authenticate(alice["Authorization"].split()[1])
    assert owner is not None

    def worker() -> None:
        time.sleep(0.15)
        api_store.claim("w")
        time.sleep(0.15)
        api_store.request_cancel(job["id"], owner.id)
        time.sleep(0.1)
        api_store.mark_cancelled(job["id"], "w")

    thread = threading.Thread(target=worker)
    thread.start()
    response = api.get(f"/v1/jobs/{job['id']}/events", headers=alice)
    thread.join()
    events = _events(response.text)
    kinds = [e for e, _ in events]
    assert kinds[0] == "progress" and kinds[-1] == "end"
    assert "comment" in kinds  # heartbeats while nothing changed
    statuses = [re.search(r'"status":"(\w+)"', d).group(1) for e, d in events if e == "progress"]  # type: ignore[union-attr]
    # Every change is sent once, in order (a slow poll may miss a short-lived state).
    assert statuses[0] == "QUEUED" and statuses[-1] == "CANCELLED"
    lifecycle = ["QUEUED", "PREPARING", "CANCELLING", "CANCELLED"]
    assert statuses == [s for s in lifecycle if s in statuses]


# ------------------------------------------------------------------ health and metrics
def test_health_and_readiness(api: TestClient, api_settings: Settings, tmp_path: Path) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}
    (tmp_path / "not-a-db").mkdir()
    broken = Store(make_engine(f"sqlite:///{tmp_path}/not-a-db"))
    with TestClient(create_app(api_settings, broken)) as client:
        assert client.get("/healthz").status_code == 200
        response = client.get("/readyz")
        assert response.status_code == 503 and error_of(response) == "not_ready"
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "rankopt_store_up 0" in metrics.text
    broken.dispose()


_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*\})? '
    r"(-?[0-9.e+-]+|\+Inf|NaN)$"
)


def _samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert not line or line.startswith(("# HELP ", "# TYPE ")), line
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def test_metrics(api: TestClient, api_store: Store, alice: dict[str, str], weights: Path) -> None:
    first = submit(api, alice, SPEC, weights).json()["id"]
    submit(api, alice, SPEC, weights)
    api.post(f"/v1/jobs/{first}/cancel", headers=alice)
    api.get("/no/such/route")
    api.get("/v1/jobs", headers={"Authorization": "Bearer rk_wrong"})
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(response.text)
    for status in JobStatus:
        assert f'rankopt_jobs{{status="{status.value}"}}' in samples
    assert samples['rankopt_jobs{status="QUEUED"}'] == 1
    assert samples['rankopt_jobs{status="CANCELLED"}'] == 1
    assert samples["rankopt_trials_total"] == 0
    assert samples["rankopt_store_up"] == 1
    requests = 'rankopt_http_requests_total{method="POST",route="/v1/jobs",status="201"}'
    assert samples[requests] == 2
    cancel = (
        'rankopt_http_requests_total{method="POST",route="/v1/jobs/{job_id}/cancel",status="200"}'
    )
    assert samples[cancel] == 1
    assert samples['rankopt_http_requests_total{method="GET",route="unmatched",status="404"}'] == 1
    assert samples['rankopt_http_requests_total{method="GET",route="/v1/jobs",status="401"}'] == 1
    name = "rankopt_http_request_duration_seconds"
    buckets = [
        (key, value)
        for key, value in samples.items()
        if key.startswith(f'{name}_bucket{{method="POST",route="/v1/jobs"')
    ]
    counts = [value for _, value in buckets]
    assert counts == sorted(counts) and buckets[-1][0].endswith('le="+Inf"}')
    assert counts[-1] == samples[f'{name}_count{{method="POST",route="/v1/jobs"}}'] == 2
    assert samples[f'{name}_sum{{method="POST",route="/v1/jobs"}}'] > 0


# ------------------------------------------------------------------ OpenAPI and errors
DESIGN_ROUTES = [
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{job_id}"),
    ("get", "/v1/jobs/{job_id}/trials"),
    ("get", "/v1/jobs/{job_id}/events"),
    ("post", "/v1/jobs/{job_id}/cancel"),
    ("get", "/v1/jobs/{job_id}/result"),
    ("get", "/v1/jobs/{job_id}/artifacts"),
    ("get", "/v1/jobs/{job_id}/artifacts/{name}"),
    ("delete", "/v1/jobs/{job_id}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
]


def test_openapi_lists_every_route_with_responses(api: TestClient) -> None:
    spec: dict[str, Any] = api.get("/openapi.json").json()
    paths = spec["paths"]
    for method, path in DESIGN_ROUTES:
        assert method in paths.get(path, {}), (method, path)
        operation = paths[path][method]
        success = [code for code in operation["responses"] if code.startswith("2")]
        assert success, (method, path)
        content = operation["responses"][success[0]].get("content", {})
        if success[0] != "204":
            assert content, (method, path)
        if path.startswith("/v1"):
            error = operation["responses"]["401"]["content"]["application/json"]["schema"]
            assert error["$ref"].endswith("/ErrorBody"), (method, path)
            assert operation.get("security"), (method, path)
    assert "multipart/form-data" in paths["/v1/jobs"]["post"]["requestBody"]["content"]
    job = paths["/v1/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert job["schema"]["$ref"].endswith("/JobOut")
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_error_bodies_are_code_and_message(
    api_settings: Settings, api_store: Store, alice: dict[str, str]
) -> None:
    app = create_app(api_settings, api_store)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/nope", headers=alice)
        assert response.status_code == 404 and error_of(response) == "not_found"
        response = client.put("/v1/jobs", headers=alice)
        assert response.status_code == 405 and error_of(response) == "method_not_allowed"
        assert "POST" in response.headers["Allow"]
        response = client.get("/v1/jobs/not-an-id", headers=alice)
        assert response.status_code == 404 and error_of(response) == "job_not_found"
        response = client.get("/v1/jobs", params={"limit": "many"}, headers=alice)
        assert response.status_code == 422 and error_of(response) == "validation_error"
        assert "limit" in response.json()["message"]

        def boom(*args: object, **kwargs: object) -> None:
            raise RuntimeError("kaboom")

        api_store.list_jobs = boom  # type: ignore[method-assign]
        response = client.get("/v1/jobs", headers=alice)
        assert response.status_code == 500 and error_of(response) == "internal_error"
        assert "kaboom" not in response.text


def test_the_api_runs_without_torch(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import io, json, pickle, sys, zipfile, collections
        from pathlib import Path
        import numpy as np
        from fastapi.testclient import TestClient
        import service.client, service.cli
        from service.api import create_app
        from service.settings import Settings
        from service.store import Store

        tmp = Path({str(tmp_path)!r})
        settings = Settings(database_url=f"sqlite:///{{tmp}}/db.sqlite", artifact_root=tmp / "a")
        app = create_app(settings)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("archive/data.pkl", pickle.dumps(collections.OrderedDict(), 2))
        data = io.BytesIO()
        x, y = np.zeros((4, 1, 2, 2), np.float32), np.zeros(4, np.int64)
        np.savez(data, x_train=x, y_train=y, x_val=x, y_val=y)
        with TestClient(app) as client:
            key = app.state.api.store.create_api_key("k")[0]
            assert client.get("/readyz").status_code == 200
            spec = json.dumps({{"arch": "rankopt:lenet5", "dataset": "upload"}})
            files = {{"spec": (None, spec), "weights": ("w.pt", buffer.getvalue()),
                      "dataset": ("d.npz", data.getvalue())}}
            response = client.post("/v1/jobs", files=files,
                                   headers={{"Authorization": "Bearer " + key}})
            assert response.status_code == 201, response.text
            job_id = response.json()["id"]
            for path in ("", "/trials", "/artifacts", "/result"):
                client.get("/v1/jobs/" + job_id + path,
                           headers={{"Authorization": "Bearer " + key}})
            assert client.get("/metrics").status_code == 200
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("torch", "optuna", "torchvision", "tensorops")
                       or m.startswith(("worker.search", "worker.pool", "worker.zoo")))
        assert not heavy, heavy
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
