"""REST API, results: artifacts with digests, path confinement, trials from report or study."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import optuna
import pytest
from fastapi.testclient import TestClient

from service.artifacts import job_result_dir
from service.settings import Settings
from service.store import Store
from tests.service.api_helpers import SPEC, error_of, finish, report, submit, torch_weights


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return torch_weights(tmp_path / "model.pt")


@pytest.fixture
def done(
    api: TestClient, api_store: Store, api_settings: Settings, alice: dict[str, str], weights: Path
) -> str:
    """A SUCCEEDED job with three artifacts."""
    job_id = str(submit(api, alice, SPEC, weights).json()["id"])
    files = {
        "model.zip": b"PK\x03\x04" + bytes(range(256)) * 40,
        "report.json": json.dumps({"hello": "world"}).encode(),
        "pareto.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
    }
    finish(api_store, api_settings, job_id, files)
    return job_id


def test_list_and_download_with_digest(
    api: TestClient, alice: dict[str, str], api_settings: Settings, done: str
) -> None:
    listing = api.get(f"/v1/jobs/{done}/artifacts", headers=alice)
    assert listing.status_code == 200
    artifacts = {a["name"]: a for a in listing.json()["artifacts"]}
    assert sorted(artifacts) == ["model.zip", "pareto.png", "report.json"]
    for name, meta in artifacts.items():
        assert meta["url"] == f"/v1/jobs/{done}/artifacts/{name}"
        response = api.get(meta["url"], headers=alice)
        assert response.status_code == 200
        data = (job_result_dir(api_settings, done) / name).read_bytes()
        assert response.content == data
        digest = hashlib.sha256(data).hexdigest()
        assert meta["sha256"] == digest and meta["size"] == len(data)
        assert response.headers["X-Content-SHA256"] == digest
        assert response.headers["Digest"] == "sha-256=" + base64.b64encode(
            hashlib.sha256(data).digest()
        ).decode("ascii")
        assert name in response.headers["Content-Disposition"]
    assert api.get(artifacts["model.zip"]["url"], headers=alice).headers["Content-Type"] == (
        "application/zip"
    )
    assert api.get(artifacts["pareto.png"]["url"], headers=alice).headers["Content-Type"] == (
        "image/png"
    )
    assert (
        api.get(artifacts["report.json"]["url"], headers=alice)
        .headers["Content-Type"]
        .startswith("application/json")
    )


def test_artifact_names_never_escape(
    api: TestClient, alice: dict[str, str], api_settings: Settings, done: str, tmp_path: Path
) -> None:
    secret = api_settings.artifact_root / "secret"
    secret.write_text("top secret")
    (tmp_path / "outside").write_text("top secret")
    attempts = [
        "..%2Fsecret",
        "..%2F..%2Fsecret",
        "%2E%2E%2Fsecret",
        "..%5Csecret",
        "%2Fetc%2Fpasswd",
        "%2E%2E",
        ".hidden",
        "model.zip%00.png",
        "nope.bin",
        "a" * 200,
    ]
    for name in attempts:
        response = api.get(f"/v1/jobs/{done}/artifacts/{name}", headers=alice)
        assert response.status_code in (404, 422), name
        assert error_of(response) in ("artifact_not_found", "not_found", "validation_error"), name
        assert b"top secret" not in response.content
    response = api.get(f"/v1/jobs/{done}/artifacts/../../secret", headers=alice)
    assert b"top secret" not in response.content


def test_artifact_file_gone_is_404(
    api: TestClient, alice: dict[str, str], api_settings: Settings, done: str
) -> None:
    (job_result_dir(api_settings, done) / "pareto.png").unlink()
    response = api.get(f"/v1/jobs/{done}/artifacts/pareto.png", headers=alice)
    assert response.status_code == 404 and error_of(response) == "artifact_missing"


def test_artifact_path_outside_root_is_not_served(
    api: TestClient,
    api_store: Store,
    alice: dict[str, str],
    api_settings: Settings,
    done: str,
    tmp_path: Path,
) -> None:
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("top secret")
    link = job_result_dir(api_settings, done) / "link"
    link.symlink_to(outside)
    api_store.add_artifact(done, "link.txt", f"jobs/{done}/link", "0" * 64, 10)
    response = api.get(f"/v1/jobs/{done}/artifacts/link.txt", headers=alice)
    assert response.status_code == 404 and b"top secret" not in response.content


def test_trials_from_the_result(api: TestClient, alice: dict[str, str], done: str) -> None:
    body = api.get(f"/v1/jobs/{done}/trials", headers=alice).json()
    assert body["source"] == "result" and body["job_id"] == done
    assert [t["number"] for t in body["trials"]] == [0, 1, 2]
    first = body["trials"][0]
    assert first["state"] == "COMPLETE" and first["seed"] == "evbmf"
    assert first["accuracy"] == 0.9 and first["compression"] == 2.0 and first["duration_s"] == 1.5


def test_trials_from_report_json_when_the_result_has_none(
    api: TestClient,
    api_store: Store,
    api_settings: Settings,
    alice: dict[str, str],
    weights: Path,
) -> None:
    job_id = submit(api, alice, SPEC, weights).json()["id"]
    full = report(job_id)
    summary = {k: v for k, v in full.items() if k != "trials"}
    finish(api_store, api_settings, job_id, {"report.json": json.dumps(full).encode()}, summary)
    body = api.get(f"/v1/jobs/{job_id}/trials", headers=alice).json()
    assert body["source"] == "report" and len(body["trials"]) == 3
    result = api.get(f"/v1/jobs/{job_id}/result", headers=alice).json()
    assert result["pareto_front"][1] == {"trial": 1, "accuracy": 0.8, "compression": 4.0}


def test_trials_of_a_running_job_come_from_the_study(
    api: TestClient,
    api_store: Store,
    api_settings: Settings,
    alice: dict[str, str],
    weights: Path,
) -> None:
    job = submit(api, alice, SPEC, weights).json()
    empty = api.get(f"/v1/jobs/{job['id']}/trials", headers=alice).json()
    assert empty == {"job_id": job["id"], "source": "none", "trials": []}

    storage = optuna.storages.RDBStorage(api_settings.database_url)
    study = optuna.create_study(storage=storage, study_name=job["study_name"], direction="maximize")
    study.enqueue_trial({"m": "cp", "s": 0.5}, user_attrs={"seed": "evbmf-1.0"})
    for _ in range(2):
        trial = study.ask()
        method = trial.suggest_categorical("m", ["tucker2", "cp"])
        trial.suggest_float("s", 0.1, 4.0, log=True)
        trial.suggest_int("k", 1, 8)
        trial.set_user_attr("plan", {"layers": {"0": {"method": method}}})
        trial.set_user_attr("accuracy", 0.875)
        trial.set_user_attr("accuracy_drop", 1.25)
        trial.set_user_attr("compression", 3.5)
        trial.set_user_attr("seconds", 2.0)
        study.tell(trial, 3.5)
    running = study.ask()
    running.suggest_categorical("m", ["tucker2", "cp"])
    storage.engine.dispose()

    body = api.get(f"/v1/jobs/{job['id']}/trials", headers=alice).json()
    assert body["source"] == "study"
    trials = body["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    first = trials[0]
    assert first["seed"] == "evbmf-1.0"
    assert first["params"]["m"] == "cp" and first["params"]["s"] == pytest.approx(0.5)
    assert isinstance(first["params"]["k"], int)
    assert first["plan"] == {"layers": {"0": {"method": "cp"}}}
    assert (first["accuracy"], first["accuracy_drop"], first["compression"]) == (0.875, 1.25, 3.5)
    assert first["duration_s"] is not None and first["duration_s"] >= 0
    assert trials[2]["accuracy"] is None and trials[2]["duration_s"] is None
