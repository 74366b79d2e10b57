"""Security: authentication and isolation on every route of the app.

The routes are enumerated from the app itself, so a route added later without an entry in the
tables below fails :func:`test_the_tables_cover_every_route_of_the_app`. Every ``/v1`` route
answers 401 (with ``WWW-Authenticate: Bearer``) to a missing, malformed, unknown or revoked key,
before it reads a body or looks a job up; another key's job is a 404 ``job_not_found`` whose
body is the one a job id that never existed gets, so a caller cannot learn that it exists.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx import Response

from service.settings import Settings
from service.store import JobStatus, Store
from tests.service.api_helpers import SPEC, error_of, finish, submit, torch_weights

#: Every authenticated route (method, path template).
PROTECTED: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/{job_id}"),
        ("DELETE", "/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs/{job_id}/trials"),
        ("GET", "/v1/jobs/{job_id}/events"),
        ("POST", "/v1/jobs/{job_id}/cancel"),
        ("GET", "/v1/jobs/{job_id}/result"),
        ("GET", "/v1/jobs/{job_id}/artifacts"),
        ("GET", "/v1/jobs/{job_id}/artifacts/{name}"),
        ("GET", "/v1/jobs/{job_id}/dashboard"),
    }
)
#: The web page (service/web): public, out of the OpenAPI document; its calls need the key.
WEB_PAGE: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/"),
        ("GET", "/ui/config"),
        ("GET", "/static/style.css"),
        # app.js and the ES modules it imports
        *(
            ("GET", f"/static/{name}.js")
            for name in (
                "app",
                "api",
                "dom",
                "job",
                "jobs",
                "plot",
                "router",
                "session",
                "sse",
                "submit",
            )
        ),
    }
)
#: Routes that need no key: health, metrics, the API's own documentation and the web page.
PUBLIC: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
        *WEB_PAGE,
    }
)
#: The job-scoped routes: ``{job_id}`` in the path.
JOB_ROUTES = sorted(route for route in PROTECTED if "{job_id}" in route[1])


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, included routers resolved; HEAD, which
    Starlette adds to GET routes, is left out."""
    try:  # FastAPI >= 0.16x keeps included routers nested
        from fastapi.routing import iter_route_contexts

        contexts: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:  # older FastAPI: app.routes is flat
        contexts = list(app.routes)
    found = set()
    for route in contexts:
        path = getattr(route, "path", None)
        methods = getattr(route, "methods", None)
        assert path is not None and methods, f"a route without path or methods: {route!r}"
        for method in methods:
            if method != "HEAD":
                found.add((method, path))
    return found


def _url(path: str, job_id: str, name: str = "report.json") -> str:
    return path.replace("{job_id}", job_id).replace("{name}", name)


def _call(
    client: TestClient,
    method: str,
    path: str,
    headers: dict[str, str],
    weights: Path,
    **kwargs: Any,
) -> Response:
    """Call a route template as a legitimate client would (a real form for POST /v1/jobs)."""
    if (method, path) == ("POST", "/v1/jobs"):
        files = {
            "spec": (None, json.dumps(SPEC), "application/json"),
            "weights": (weights.name, weights.read_bytes()),
        }
        return client.post(path, files=files, headers=headers)
    return client.request(method, path, headers=headers, **kwargs)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return torch_weights(tmp_path / "model.pt")


@pytest.fixture
def jobs(
    api: TestClient,
    api_store: Store,
    api_settings: Settings,
    alice: dict[str, str],
    weights: Path,
) -> dict[str, str]:
    """Alice's jobs: one SUCCEEDED with an artifact, one still QUEUED."""
    done = str(submit(api, alice, SPEC, weights).json()["id"])
    finish(api_store, api_settings, done, {"report.json": b'{"ok": true}'})
    queued = str(submit(api, alice, SPEC, weights).json()["id"])
    return {"done": done, "queued": queued}


@pytest.fixture
def revoked(api_store: Store) -> dict[str, str]:
    key = api_store.create_api_key("carol")[0]
    api_store.revoke_api_key("carol")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def bad_credentials(alice: dict[str, str], revoked: dict[str, str]) -> list[dict[str, str]]:
    """Every way of not presenting a valid key (alice's key in the wrong place included)."""
    key = alice["Authorization"].removeprefix("Bearer ")
    return [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer rk_not-a-key"},
        {"Authorization": f"Bearer {key}x"},
        {"Authorization": f"Bearer {key[:-1]}"},
        {"Authorization": f"Basic {key}"},
        {"Authorization": f"Token {key}"},
        {"Authorization": key},
        {"X-API-Key": key},
        {"Cookie": f"api_key={key}; Authorization=Bearer {key}"},
        revoked,
    ]


# ------------------------------------------------------------------ the route table
def test_the_tables_cover_every_route_of_the_app(api: TestClient) -> None:
    served = app_routes(api.app)  # type: ignore[arg-type]
    unknown = served - PROTECTED - PUBLIC
    assert not unknown, f"routes with no entry in the security tables: {sorted(unknown)}"
    gone = (PROTECTED | PUBLIC) - served
    assert not gone, f"routes in the tables the app no longer serves: {sorted(gone)}"
    assert all(path.startswith("/v1/") or path == "/v1/jobs" for _, path in PROTECTED)
    assert not any(path.startswith("/v1") for _, path in PUBLIC)
    spec = api.get("/openapi.json").json()
    documented = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert documented == served - WEB_PAGE - {
        r for r in PUBLIC if r[1] in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
    }


# ------------------------------------------------------------------ 401
@pytest.mark.parametrize("route", sorted(PROTECTED), ids=lambda r: f"{r[0]} {r[1]}")
def test_every_v1_route_refuses_a_missing_or_bad_key(
    api: TestClient,
    api_store: Store,
    api_settings: Settings,
    jobs: dict[str, str],
    bad_credentials: list[dict[str, str]],
    weights: Path,
    route: tuple[str, str],
) -> None:
    method, template = route
    uploads_before = sorted(api_settings.resolved_upload_dir.iterdir())
    for job_id in (jobs["done"], jobs["queued"], uuid.uuid4().hex, "not-a-job"):
        for headers in bad_credentials if job_id == jobs["done"] else [{}]:
            response = _call(api, method, _url(template, job_id), headers, weights)
            assert response.status_code == 401, (route, job_id, headers, response.text)
            assert error_of(response) == "unauthorized"
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert b"report" not in response.content and jobs["done"] not in response.text
    # Nothing was written, cancelled or deleted.
    assert sorted(api_settings.resolved_upload_dir.iterdir()) == uploads_before
    assert api_store.load_job(jobs["done"]).status is JobStatus.SUCCEEDED
    assert api_store.load_job(jobs["queued"]).status is JobStatus.QUEUED


def test_unauthenticated_uploads_are_not_read(
    api: TestClient, api_settings: Settings, weights: Path
) -> None:
    """401 comes before the body: an oversized form is refused as 401, not 413."""
    files = {
        "spec": (None, json.dumps(SPEC), "application/json"),
        "weights": ("w.pt", b"\0" * (api_settings.max_upload_bytes * 2)),
    }
    response = api.post("/v1/jobs", files=files)
    assert response.status_code == 401 and error_of(response) == "unauthorized"
    uploads = api_settings.resolved_upload_dir
    assert not uploads.exists() or list(uploads.iterdir()) == []


@pytest.mark.parametrize("route", sorted(PUBLIC), ids=lambda r: f"{r[0]} {r[1]}")
def test_health_metrics_and_docs_need_no_key(
    api: TestClient, jobs: dict[str, str], route: tuple[str, str]
) -> None:
    method, path = route
    response = api.request(method, path)
    assert response.status_code == 200, response.text
    assert "WWW-Authenticate" not in response.headers
    # A public route does not reveal a caller's jobs.
    assert jobs["done"] not in response.text and jobs["queued"] not in response.text


# ------------------------------------------------------------------ cross-key 404
def _anonymised(response: Response, *ids: str) -> tuple[int, str, str]:
    text = response.text
    for job_id in ids:
        text = text.replace(job_id, "<id>")
    return response.status_code, response.headers.get("content-type", ""), text


@pytest.mark.parametrize("route", JOB_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
@pytest.mark.parametrize("which", ["done", "queued"])
def test_another_keys_job_is_a_404_like_a_missing_one(
    api: TestClient,
    api_store: Store,
    alice: dict[str, str],
    bob: dict[str, str],
    jobs: dict[str, str],
    weights: Path,
    route: tuple[str, str],
    which: str,
) -> None:
    method, template = route
    target = jobs[which]
    before = api_store.load_job(target)
    missing = uuid.uuid4().hex
    for name in ("report.json", "nope.json"):
        theirs = _call(api, method, _url(template, target, name), bob, weights)
        assert theirs.status_code == 404, (route, theirs.text)
        assert error_of(theirs) == "job_not_found"
        assert b"report" not in theirs.content or name in theirs.text
        absent = _call(api, method, _url(template, missing, name), bob, weights)
        assert _anonymised(theirs, target) == _anonymised(absent, missing), route
    after = api_store.load_job(target)
    assert (after.status, after.updated_at) == (before.status, before.updated_at)
    if method == "GET" and not (template.endswith("/events") and which == "queued"):
        mine = _call(api, method, _url(template, target), alice, weights)  # still alice's
        assert mine.status_code in (200, 409) or error_of(mine) == "artifact_not_found", route


def test_listing_and_idempotency_keys_are_per_key(
    api: TestClient,
    alice: dict[str, str],
    bob: dict[str, str],
    jobs: dict[str, str],
    weights: Path,
) -> None:
    assert api.get("/v1/jobs", headers=bob).json() == {"jobs": [], "next_cursor": None}
    for status in ("SUCCEEDED", "QUEUED"):
        listed = api.get("/v1/jobs", params={"status": status}, headers=bob).json()
        assert listed["jobs"] == [], status
    # Alice's cursor does not page through alice's jobs for bob.
    cursor = api.get("/v1/jobs", params={"limit": 1}, headers=alice).json()["next_cursor"]
    assert cursor
    paged = api.get("/v1/jobs", params={"cursor": cursor}, headers=bob)
    assert paged.status_code in (200, 422)
    if paged.status_code == 200:
        assert paged.json()["jobs"] == []
    # The same Idempotency-Key and body from bob make bob's own job, not a replay of alice's.
    key = {"Idempotency-Key": "same-key"}
    first = submit(api, alice, SPEC, weights, headers=key)
    second = submit(api, bob, SPEC, weights, headers=key)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert "Idempotent-Replayed" not in second.headers
    bobs = {job["id"] for job in api.get("/v1/jobs", headers=bob).json()["jobs"]}
    assert bobs == {second.json()["id"]}
    alices = {job["id"] for job in api.get("/v1/jobs", headers=alice).json()["jobs"]}
    assert alices == {jobs["done"], jobs["queued"], first.json()["id"]}
