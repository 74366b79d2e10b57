"""The container deployment: ``docker-compose.yml`` as ``docker-compose config`` reads it, and
the ``Dockerfile``. There is no Docker engine here: the compose file is validated and
normalised by the ``docker-compose`` tool (``make test`` installs it when missing; without it
the compose tests are skipped with the reason)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """``docker-compose config`` of the file, every profile included."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip(
            "docker-compose is not installed (`make test` installs the Debian package "
            "`docker-compose` when apt-get can; it could not here)"
        )
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    env["COMPOSE_PROFILES"] = "cpu"
    result = subprocess.run(
        [tool, "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr  # e.g. an unset variable
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def _ports(service: dict[str, Any]) -> list[str]:
    return [str(p["published"] if isinstance(p, dict) else p) for p in service.get("ports", [])]


def test_services_and_shared_storage(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "api", "worker", "worker-cpu", "optuna-dashboard"}
    assert services["postgres"]["image"].startswith("postgres:16")
    assert {"pgdata", "artifacts"} <= set(compose["volumes"])
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])
    for name in ("api", "worker", "worker-cpu"):
        service = services[name]
        env = service["environment"]
        assert env["RANKOPT_DATABASE_URL"].startswith("postgresql://rankopt:")
        assert env["RANKOPT_DATABASE_URL"].endswith("@postgres:5432/rankopt")
        assert env["RANKOPT_ARTIFACT_ROOT"] == "/artifacts"
        assert any(v.startswith("artifacts:/artifacts") for v in service["volumes"])
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["image"] == "rankopt:latest" and "build" in service
    assert services["api"]["command"][:3] == ["serve", "--host", "0.0.0.0"]
    assert services["worker"]["command"] == ["worker", "--device", "auto"]
    assert services["worker-cpu"]["command"] == ["worker", "--device", "cpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]


def test_postgres_healthcheck(compose: dict[str, Any]) -> None:
    check = compose["services"]["postgres"]["healthcheck"]
    assert "pg_isready" in " ".join(check["test"])
    assert check["retries"] >= 3


def test_worker_gpu_reservation_and_replicas(compose: dict[str, Any]) -> None:
    deploy = compose["services"]["worker"]["deploy"]
    assert deploy["replicas"] == 2
    (device,) = deploy["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1
    assert device["capabilities"] == ["gpu"]
    assert "resources" not in compose["services"]["worker-cpu"].get("deploy", {})


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    published: dict[str, list[str]] = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host_ip, target = port.get("host_ip"), port["target"]
            else:  # "127.0.0.1:8000:8000/tcp"
                match = re.fullmatch(r"(?:([\d.]+):)?(\d+):(\d+)(?:/\w+)?", str(port))
                assert match, port
                host_ip, target = match.group(1), int(match.group(3))
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            published.setdefault(name, []).append(str(target))
    assert published == {"api": ["8000"], "optuna-dashboard": ["8080"]}
    dashboard = services["optuna-dashboard"]
    assert dashboard["image"].startswith("ghcr.io/optuna/optuna-dashboard")
    assert dashboard["command"][0].startswith("postgresql+psycopg2://rankopt:")
    assert dashboard["command"][0].endswith("@postgres:5432/rankopt")


def test_dockerfile_runs_rankopt_as_an_unprivileged_user() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r'pip install "\.\[\$\{EXTRAS\}\]"', text)
    assert re.search(r'^ARG EXTRAS="[^"]*\bpostgres\b', text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"useradd\b.*\b" + re.escape(users[-1]) + r"\b", text)
    assert re.search(r'^ENTRYPOINT \["rankopt"\]', text, re.M)
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignore)
