"""The web page's routes without a browser: the page and its files, their security headers,
the form's validation config, the optuna-dashboard link, and the package data that ships them.

The page itself is driven in a real browser by tests/e2e/test_browser.py.
"""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path

import optuna
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.api import create_app
from service.settings import Settings
from service.spec import JobSpec
from service.store import Store
from service.web import PAGE_CSP, STATIC_DIR, STATIC_FILES
from tests.service.api_helpers import error_of, safetensors_weights, submit

ROOT = Path(__file__).resolve().parents[2]


def _csp(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


# ------------------------------------------------------------------ the page and its files
def test_page_is_served_at_root_with_a_strict_content_security_policy(api: TestClient) -> None:
    response = api.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = _csp(response.headers["Content-Security-Policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]  # no inline script, no eval, no other origin
    assert csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert response.headers["Content-Security-Policy"] == PAGE_CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_markup_has_no_inline_script_or_style_and_loads_only_its_own_files(
    api: TestClient,
) -> None:
    html = api.get("/").text
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    assert scripts, "the page loads its script"
    for attrs, body in scripts:
        assert 'src="/static/' in attrs and not body.strip()
    assert not re.search(r"\sstyle=", html), "a style attribute would need 'unsafe-inline'"
    assert not re.search(r"\son[a-z]+=", html), "inline event handlers are inline script"
    referenced = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert {"/static/app.js", "/static/style.css"} <= set(referenced)
    for path in referenced:
        response = api.get(path)
        assert response.status_code == 200, path
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert api.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert api.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_static_files_reference_no_other_origin() -> None:
    # No CDN: every asset is ours. (The SVG namespace is an identifier, not a request.)
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        urls = set(re.findall(r"https?://[^\s\"'<>)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (path.name, urls)


def test_script_keeps_the_key_in_session_storage_and_sends_it_as_a_header() -> None:
    # app.js and the ES modules it imports, read as one script
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(STATIC_DIR.glob("*.js")))
    script = re.sub(r"^\s*//.*$", "", text, flags=re.M)  # the code, without its comments
    assert "sessionStorage" in script and "localStorage" not in script
    assert "document.cookie" not in script
    assert '"Bearer "' in script
    assert "EventSource" not in script  # it cannot send the header: fetch() streaming instead
    assert ".innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "eval(" not in script and "new Function" not in script


def test_every_file_of_the_page_has_its_route() -> None:
    shipped = {p.name for p in STATIC_DIR.iterdir() if p.is_file()} - {"index.html"}
    assert set(STATIC_FILES) == shipped


@pytest.mark.parametrize(
    "path", ["/static/missing.js", "/static/index.html", "/static/..%2Froutes.py", "/static/"]
)
def test_unknown_static_files_are_404(api: TestClient, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 404
    assert error_of(response) == "not_found"


def test_page_routes_stay_out_of_the_openapi_document(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert {path for path in paths if not path.startswith("/v1/")} == {
        "/healthz",
        "/readyz",
        "/metrics",
    }
    assert "/v1/jobs/{job_id}/dashboard" in paths


def test_static_files_ship_as_package_data() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    line = re.search(r'^"service\.web"\s*=\s*\[(.*)\]$', section, flags=re.M)
    assert line is not None, "pyproject.toml ships no package data for service.web"
    patterns = re.findall(r'"([^"]+)"', line.group(1))
    for path in STATIC_DIR.iterdir():
        relative = path.relative_to(STATIC_DIR.parent).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative
    assert (STATIC_DIR.parent / "__init__.py").is_file()


# ------------------------------------------------------------------ the form's rules
def test_ui_config_gives_the_servers_own_spec_rules(
    api: TestClient, api_settings: Settings
) -> None:
    config = api.get("/ui/config").json()
    assert config["spec_schema"] == JobSpec.model_json_schema()
    assert config["max_upload_bytes"] == api_settings.max_upload_bytes
    assert set(config["builtin_datasets"]) == {
        "digits",
        "mnist5k",
        "fashion-mnist",
        "breast-cancer",
        "breast-cancer-seq",
    }
    arch = re.compile(config["arch_pattern"])
    for value in ["rankopt:lenet5", "torchvision:resnet18", "mypkg.models:build", "lenet", "a:b c"]:
        try:
            JobSpec(arch=value)
            accepted = True
        except ValidationError:
            accepted = False
        assert bool(arch.match(value)) == accepted, value
    server = re.compile(config["server_dataset_pattern"])
    assert server.match("folder:/data/x") and not server.match("s3://bucket")


# ------------------------------------------------------------------ optuna-dashboard link
@pytest.fixture
def job_id(api: TestClient, alice: dict[str, str], tmp_path: Path) -> str:
    response = submit(api, alice, weights=safetensors_weights(tmp_path / "w.safetensors"))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_dashboard_link_is_null_without_a_configured_dashboard(
    api: TestClient, alice: dict[str, str], bob: dict[str, str], job_id: str
) -> None:
    assert api.get(f"/v1/jobs/{job_id}/dashboard").status_code == 401
    response = api.get(f"/v1/jobs/{job_id}/dashboard", headers=bob)
    assert response.status_code == 404 and error_of(response) == "job_not_found"
    body = api.get(f"/v1/jobs/{job_id}/dashboard", headers=alice).json()
    assert body == {"study_name": f"job-{job_id}", "study_id": None, "url": None}


def test_dashboard_link_points_at_the_jobs_study(
    api_settings: Settings, api_store: Store, alice: dict[str, str], tmp_path: Path
) -> None:
    settings = api_settings.model_copy(update={"dashboard_url": "http://127.0.0.1:8080"})
    app = create_app(settings, api_store)
    with TestClient(app) as client:
        response = submit(client, alice, weights=safetensors_weights(tmp_path / "w.safetensors"))
        job_id = response.json()["id"]
        before = client.get(f"/v1/jobs/{job_id}/dashboard", headers=alice).json()
        assert before["study_id"] is None and before["url"] == "http://127.0.0.1:8080/"
        optuna.create_study(storage=settings.database_url, study_name="another-study")
        study = optuna.create_study(storage=settings.database_url, study_name=f"job-{job_id}")
        after = client.get(f"/v1/jobs/{job_id}/dashboard", headers=alice).json()
    assert after["study_id"] == study._study_id
    assert after["url"] == f"http://127.0.0.1:8080/dashboard/studies/{study._study_id}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        (" https://optuna.example.org/base ", "https://optuna.example.org/base"),
        ("", None),
    ],
)
def test_dashboard_url_setting_is_normalised(value: str, expected: str | None) -> None:
    assert Settings(dashboard_url=value).dashboard_url == expected


@pytest.mark.parametrize("value", ["127.0.0.1:8080", "javascript:alert(1)", "ftp://host/x"])
def test_dashboard_url_setting_refuses_what_is_not_a_web_address(value: str) -> None:
    with pytest.raises(ValidationError, match="dashboard_url"):
        Settings(dashboard_url=value)
