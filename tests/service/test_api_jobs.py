"""REST API, jobs: authentication, submission and its checks, listing, cancel, delete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.artifacts import job_result_dir, job_upload_dir
from service.settings import Settings
from service.store import JobStatus, Store
from tests.service.api_helpers import (
    SPEC,
    error_of,
    finish,
    npz_dataset,
    safetensors_weights,
    submit,
    torch_weights,
)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return torch_weights(tmp_path / "model.pt")


def _uploads(settings: Settings) -> list[Path]:
    root = settings.resolved_upload_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ------------------------------------------------------------------ authentication
def test_missing_invalid_and_revoked_keys_are_401(
    api: TestClient, api_store: Store, alice: dict[str, str]
) -> None:
    cases = [
        {},
        {"Authorization": "Bearer rk_not-a-key"},
        {"Authorization": "Basic YWxpY2U6eA=="},
        {"Authorization": "Bearer"},
    ]
    for headers in cases:
        response = api.get("/v1/jobs", headers=headers)
        assert response.status_code == 401, headers
        assert error_of(response) == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert api.get("/v1/jobs", headers=alice).status_code == 200
    api_store.revoke_api_key("alice")
    response = api.get("/v1/jobs", headers=alice)
    assert response.status_code == 401 and error_of(response) == "unauthorized"


def test_other_keys_jobs_are_404_everywhere(
    api: TestClient,
    api_store: Store,
    api_settings: Settings,
    alice: dict[str, str],
    bob: dict[str, str],
    weights: Path,
) -> None:
    job_id = submit(api, alice, SPEC, weights).json()["id"]
    finish(api_store, api_settings, job_id, {"report.json": b"{}"})
    routes = [
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/trials"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/result"),
        ("GET", f"/v1/jobs/{job_id}/artifacts"),
        ("GET", f"/v1/jobs/{job_id}/artifacts/report.json"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("DELETE", f"/v1/jobs/{job_id}"),
    ]
    for method, path in routes:
        response = api.request(method, path, headers=bob)
        assert response.status_code == 404, (method, path)
        assert error_of(response) == "job_not_found"
    assert api.get("/v1/jobs", headers=bob).json() == {"jobs": [], "next_cursor": None}
    for method, path in routes:  # still there for its owner
        if method == "GET":
            assert api.request(method, path, headers=alice).status_code == 200, path


# ------------------------------------------------------------------ submission
def test_submit_builtin_dataset(
    api: TestClient, api_store: Store, api_settings: Settings, alice: dict[str, str], weights: Path
) -> None:
    response = submit(api, alice, {**SPEC, "max_accuracy_drop": 0.5}, weights)
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "QUEUED" and job["phase"] == "queued" and job["error"] is None
    assert job["progress"]["trials_total"] == 4 and job["progress"]["trials_done"] == 0
    assert job["spec"]["max_accuracy_drop"] == 0.5 and job["spec"]["epochs_per_trial"] == 3
    record = api_store.load_job(job["id"])
    assert record.weights_path == f"{job['id']}/weights.pt"  # relative to the upload folder
    stored = api_settings.resolved_upload_dir / record.weights_path
    assert stored == job_upload_dir(api_settings, job["id"]) / "weights.pt"
    assert stored.read_bytes() == weights.read_bytes()
    assert record.dataset_path is None
    assert api.get(f"/v1/jobs/{job['id']}", headers=alice).json() == job


def test_submit_uploaded_npz_and_safetensors(
    api: TestClient, api_store: Store, api_settings: Settings, alice: dict[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    data = npz_dataset(tmp_path / "train.npz")
    weights = safetensors_weights(tmp_path / "w.safetensors")
    response = submit(api, alice, {**SPEC, "dataset": "upload"}, weights, data)
    assert response.status_code == 201, response.text
    record = api_store.load_job(response.json()["id"])
    assert Path(record.weights_path).name == "weights.safetensors"
    assert record.dataset_path == f"{record.id}/dataset.npz"
    assert (api_settings.resolved_upload_dir / record.dataset_path).read_bytes() == (
        data.read_bytes()
    )


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"arch": "nope"}, "spec.arch"),
        ({**SPEC, "trials": 0}, "spec.trials"),
        ({**SPEC, "bogus": 1}, "spec.bogus"),
        ({**SPEC, "dataset": "/etc"}, "spec.dataset"),
        ("{not json", "spec"),
        ("[1, 2]", "spec"),
    ],
)
def test_submit_invalid_spec_is_422(
    api: TestClient,
    api_settings: Settings,
    alice: dict[str, str],
    weights: Path,
    spec: dict[str, object] | str,
    fragment: str,
) -> None:
    response = submit(api, alice, spec, weights)
    assert response.status_code == 422
    assert error_of(response) == "invalid_spec"
    assert fragment in response.json()["message"]
    assert _uploads(api_settings) == []


def test_submit_missing_parts_are_422(
    api: TestClient, api_settings: Settings, alice: dict[str, str], weights: Path, tmp_path: Path
) -> None:
    response = submit(api, alice, SPEC, None)
    assert response.status_code == 422 and error_of(response) == "missing_weights"
    files = {"weights": ("model.pt", weights.read_bytes())}
    response = api.post("/v1/jobs", files=files, headers=alice)
    assert response.status_code == 422 and error_of(response) == "missing_spec"
    response = submit(api, alice, {**SPEC, "dataset": "upload"}, weights)
    assert response.status_code == 422 and error_of(response) == "missing_dataset"
    data = npz_dataset(tmp_path / "d.npz")
    response = submit(api, alice, SPEC, weights, data)
    assert response.status_code == 422 and error_of(response) == "unexpected_dataset"
    response = api.post(
        "/v1/jobs",
        data={"spec": json.dumps(SPEC), "other": "x"},
        files={"weights": ("model.pt", weights.read_bytes())},
        headers=alice,
    )
    assert response.status_code == 422 and error_of(response) == "unexpected_field"
    response = api.post("/v1/jobs", json=SPEC, headers=alice)
    assert response.status_code == 415 and error_of(response) == "unsupported_media_type"
    assert _uploads(api_settings) == []


def test_upload_past_the_limit_is_413_and_removed(
    api: TestClient, api_settings: Settings, alice: dict[str, str], tmp_path: Path
) -> None:
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\0" * (api_settings.max_upload_bytes + 1))
    response = submit(api, alice, SPEC, big)
    assert response.status_code == 413 and error_of(response) == "upload_too_large"
    assert "RANKOPT_MAX_UPLOAD_BYTES" in response.json()["message"]
    data = tmp_path / "big.npz"
    data.write_bytes(b"\0" * (api_settings.max_upload_bytes + 10))
    response = submit(api, alice, {**SPEC, "dataset": "upload"}, torch_weights(tmp_path / "w.pt"),
                      data)  # fmt: skip
    assert response.status_code == 413 and error_of(response) == "upload_too_large"
    assert _uploads(api_settings) == []
    assert list(api_settings.resolved_upload_dir.iterdir()) == []


def test_data_paths_must_stay_in_allowed_roots(
    api: TestClient, api_settings: Settings, alice: dict[str, str], weights: Path, tmp_path: Path
) -> None:
    root = api_settings.allowed_data_roots[0]
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    refused = [
        f"folder:{tmp_path / 'secret'}",
        "folder:../secret",
        "cifar10:escape",
        "folder:/etc",
    ]
    for dataset in refused:
        response = submit(api, alice, {**SPEC, "dataset": dataset}, weights)
        assert response.status_code == 422, dataset
        assert error_of(response) == "data_path_not_allowed", dataset
    response = submit(api, alice, {**SPEC, "dataset": "folder:missing"}, weights)
    assert response.status_code == 422 and error_of(response) == "data_path_not_found"
    for dataset in ("folder:images", f"folder:{root / 'images'}"):
        response = submit(api, alice, {**SPEC, "dataset": dataset}, weights)
        assert response.status_code == 201, response.text
    assert len(_uploads(api_settings)) == 2


def test_factories_must_be_allowed(api: TestClient, alice: dict[str, str], weights: Path) -> None:
    response = submit(api, alice, {**SPEC, "arch": "os.path:join"}, weights)
    assert response.status_code == 422 and error_of(response) == "factory_not_allowed"
    response = submit(api, alice, {**SPEC, "arch": "mypkg.models:build_net"}, weights)
    assert response.status_code == 201
    response = submit(api, alice, {**SPEC, "arch": "torchvision:resnet18"}, weights)
    assert response.status_code == 201


def test_idempotent_replay_and_conflict(
    api: TestClient, api_settings: Settings, alice: dict[str, str], bob: dict[str, str],
    weights: Path, tmp_path: Path,
) -> None:  # fmt: skip
    key = {"Idempotency-Key": "submit-1"}
    first = submit(api, alice, SPEC, weights, headers=key)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = submit(api, alice, SPEC, weights, headers=key)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert len(_uploads(api_settings)) == 1  # the repeat's files were removed

    conflict = submit(api, alice, {**SPEC, "trials": 5}, weights, headers=key)
    assert conflict.status_code == 422 and error_of(conflict) == "idempotency_conflict"
    other_weights = safetensors_weights(tmp_path / "w.safetensors")
    conflict = submit(api, alice, SPEC, other_weights, headers=key)
    assert conflict.status_code == 422 and error_of(conflict) == "idempotency_conflict"
    assert len(_uploads(api_settings)) == 1

    # Keys are per caller.
    theirs = submit(api, bob, SPEC, weights, headers=key)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]


# ------------------------------------------------------------------ listing
def test_list_pagination_and_status_filter(
    api: TestClient, api_store: Store, alice: dict[str, str], weights: Path
) -> None:
    ids = [submit(api, alice, SPEC, weights).json()["id"] for _ in range(5)]
    api.post(f"/v1/jobs/{ids[1]}/cancel", headers=alice)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/jobs", params=params, headers=alice).json()
        seen += [job["id"] for job in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3
    cancelled = api.get("/v1/jobs", params={"status": "CANCELLED"}, headers=alice).json()
    assert [job["id"] for job in cancelled["jobs"]] == [ids[1]]
    queued = api.get("/v1/jobs", params={"status": "QUEUED"}, headers=alice).json()
    assert len(queued["jobs"]) == 4

    for params in ({"limit": 0}, {"limit": 101}, {"status": "DONE"}):
        response = api.get("/v1/jobs", params=params, headers=alice)
        assert response.status_code == 422 and error_of(response) == "validation_error"
    response = api.get("/v1/jobs", params={"cursor": "garbage!"}, headers=alice)
    assert response.status_code == 422 and error_of(response) == "invalid_cursor"


# ------------------------------------------------------------------ cancel, result, delete
def test_cancel_is_idempotent(
    api: TestClient, api_store: Store, alice: dict[str, str], weights: Path
) -> None:
    job_id = submit(api, alice, SPEC, weights).json()["id"]
    first = api.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    assert first.status_code == 200 and first.json()["status"] == "CANCELLED"
    assert first.json()["finished_at"] is not None and first.json()["phase"] == "done"
    second = api.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    assert second.status_code == 200 and second.json() == first.json()

    running = submit(api, alice, SPEC, weights).json()["id"]
    assert api_store.claim("w") is not None
    response = api.post(f"/v1/jobs/{running}/cancel", headers=alice)
    assert response.json()["status"] == "CANCELLING"
    assert api.post(f"/v1/jobs/{running}/cancel", headers=alice).json()["status"] == "CANCELLING"


def test_result_is_409_until_succeeded(
    api: TestClient, api_store: Store, api_settings: Settings, alice: dict[str, str],
    weights: Path,
) -> None:  # fmt: skip
    job_id = submit(api, alice, SPEC, weights).json()["id"]
    response = api.get(f"/v1/jobs/{job_id}/result", headers=alice)
    assert response.status_code == 409 and error_of(response) == "not_finished"
    finish(api_store, api_settings, job_id, {"model.zip": b"PK-zip", "report.json": b"{}"})
    result = api.get(f"/v1/jobs/{job_id}/result", headers=alice).json()
    assert result["job_id"] == job_id
    assert result["baseline"]["accuracy"] == 0.905 and result["final"]["accuracy_drop"] == 0.5
    assert result["ratios"] == {"params": 2.0, "macs": 2.0, "latency": 1.6}
    assert result["found_feasible"] is True and result["chosen_trial"] == 0
    assert result["layers"][0]["method"] == "tucker2"
    assert result["pareto_front"] == [
        {"trial": 0, "accuracy": 0.9, "compression": 2.0},
        {"trial": 1, "accuracy": 0.8, "compression": 4.0},
    ]
    assert [a["name"] for a in result["artifacts"]] == ["model.zip", "report.json"]
    assert all(len(a["sha256"]) == 64 for a in result["artifacts"])

    failed = submit(api, alice, SPEC, weights).json()["id"]
    api_store.fail_job(failed, None, "bad_weights", "the weights do not fit")
    response = api.get(f"/v1/jobs/{failed}/result", headers=alice)
    assert response.status_code == 409 and error_of(response) == "no_result"
    job = api.get(f"/v1/jobs/{failed}", headers=alice).json()
    assert job["error"] == {"code": "bad_weights", "message": "the weights do not fit"}


def test_delete_only_finished_jobs(
    api: TestClient, api_store: Store, api_settings: Settings, alice: dict[str, str],
    weights: Path,
) -> None:  # fmt: skip
    job_id = submit(api, alice, SPEC, weights).json()["id"]
    assert api_store.claim("w") is not None  # PREPARING
    response = api.delete(f"/v1/jobs/{job_id}", headers=alice)
    assert response.status_code == 409 and error_of(response) == "job_not_finished"
    api_store.release_lease(job_id, "w")
    api_store.request_cancel(job_id, api_store.get_job(job_id, 1).owner_id)
    api_store.mark_cancelled(job_id, None)

    done = submit(api, alice, SPEC, weights).json()["id"]
    finish(api_store, api_settings, done, {"model.zip": b"zip", "report.json": b"{}"})
    uploads, results = job_upload_dir(api_settings, done), job_result_dir(api_settings, done)
    assert uploads.is_dir() and (results / "model.zip").is_file()
    response = api.delete(f"/v1/jobs/{done}", headers=alice)
    assert response.status_code == 204 and response.content == b""
    assert not uploads.exists() and not results.exists()
    response = api.get(f"/v1/jobs/{done}", headers=alice)
    assert response.status_code == 404 and error_of(response) == "job_not_found"
    assert api.delete(f"/v1/jobs/{done}", headers=alice).status_code == 404

    assert api.delete(f"/v1/jobs/{job_id}", headers=alice).status_code == 204
    assert api_store.list_jobs(1)[0] == []
    assert JobStatus.CANCELLED.value == "CANCELLED"


def test_delete_removes_the_jobs_optuna_study_only(
    api: TestClient, api_store: Store, api_settings: Settings, alice: dict[str, str],
    weights: Path,
) -> None:  # fmt: skip
    import optuna

    done = submit(api, alice, SPEC, weights).json()["id"]
    finish(api_store, api_settings, done, {"report.json": b"{}"})
    storage = optuna.storages.RDBStorage(api_settings.database_url)
    for name in (api_store.load_job(done).study_name, "someone-else"):
        study = optuna.create_study(study_name=name, storage=storage)
        for _ in range(2):
            trial = study.ask()
            trial.suggest_float("x", 0, 1)
            trial.set_user_attr("plan", {})
            study.tell(trial, 1.0)
    assert api.delete(f"/v1/jobs/{done}", headers=alice).status_code == 204
    assert optuna.get_all_study_names(storage) == ["someone-else"]
    assert len(optuna.load_study(study_name="someone-else", storage=storage).trials) == 2
