"""Helpers of the REST API tests: real weight files written with torch, a tiny dataset,
submission through the TestClient, and a simulated worker that finishes a job."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient
from httpx import Response
from safetensors.torch import save_file
from torch import nn

from service.artifacts import job_result_dir
from service.settings import Settings
from service.store import JobRecord, Store

SPEC: dict[str, Any] = {"arch": "rankopt:lenet5", "dataset": "digits", "trials": 4}


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)
    )


def torch_weights(path: Path, **save_kwargs: Any) -> Path:
    """``torch.save(model.state_dict(), path)``."""
    torch.save(small_net().state_dict(), path, **save_kwargs)
    return path


def safetensors_weights(path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in small_net().state_dict().items()}, str(path))
    return path


def npz_dataset(path: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.random((n, 1, 8, 8), dtype=np.float32),
        y_train=rng.integers(0, 3, n),
        x_val=rng.random((n // 2, 1, 8, 8), dtype=np.float32),
        y_val=rng.integers(0, 3, n // 2),
    )
    return path


def submit(
    client: TestClient,
    auth: dict[str, str],
    spec: dict[str, Any] | str | None = None,
    weights: Path | None = None,
    dataset: Path | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> Response:
    """POST /v1/jobs with a multipart form."""
    text = spec if isinstance(spec, str) else json.dumps(spec if spec is not None else SPEC)
    files: dict[str, Any] = {"spec": (None, text, "application/json")}
    if weights is not None:
        files["weights"] = (weights.name, weights.read_bytes())
    if dataset is not None:
        files["dataset"] = (dataset.name, dataset.read_bytes())
    return client.post("/v1/jobs", files=files, headers={**auth, **(headers or {})})


def report(job_id: str) -> dict[str, Any]:
    trials = [
        {"number": 0, "state": "COMPLETE", "seed": "evbmf", "params": {"m": "tucker2"},
         "plan": {"layers": {}}, "accuracy": 0.9, "accuracy_drop": 0.5, "compression": 2.0,
         "params_count": 100, "macs": 1000, "latency_s": None, "duration_s": 1.5},
        {"number": 1, "state": "COMPLETE", "seed": None, "params": {"m": "cp"},
         "plan": {"layers": {}}, "accuracy": 0.8, "accuracy_drop": 10.5, "compression": 4.0,
         "params_count": 50, "macs": 500, "latency_s": None, "duration_s": 1.2},
        {"number": 2, "state": "PRUNED", "seed": None, "params": {}, "plan": None,
         "accuracy": None, "accuracy_drop": None, "compression": None, "params_count": None,
         "macs": None, "latency_s": None, "duration_s": 0.3},
    ]  # fmt: skip
    return {
        "baseline": {"accuracy": 0.905, "params": 200, "macs": 2000, "latency_s": 0.01},
        "final": {"accuracy": 0.9, "accuracy_drop": 0.5, "params": 100, "macs": 1000,
                  "latency_s": 0.006, "constraint_met": True},
        "ratios": {"params": 2.0, "macs": 2.0, "latency": 1.6},
        "chosen_trial": 0,
        "found_feasible": True,
        "plan": {"layers": {"0": {"method": "tucker2", "ranks": [2, 3]}}},
        "layers": [{"layer": "0", "method": "tucker2", "ranks": [2, 3]}],
        "pareto_front": [0, 1],
        "trials": trials,
        "job": job_id,
    }  # fmt: skip


def finish(
    store: Store,
    settings: Settings,
    job_id: str,
    files: dict[str, bytes] | None = None,
    result: dict[str, Any] | None = None,
) -> JobRecord:
    """Drive the (only queued) job through prepare, search and finalize, as a worker would,
    writing ``files`` as artifacts."""
    claim = store.claim("test-worker")
    assert claim is not None and claim.job.id == job_id, "finish() needs the job to be next"
    store.finish_prepare(job_id, "test-worker", 0.905)
    job = store.load_job(job_id)
    store.update_progress(
        job_id,
        trials_done=job.trials_total,
        trials_running=0,
        best_compression=2.0,
        best_accuracy=0.9,
    )
    assert store.claim_finalize(job_id, "test-worker") is not None
    folder = job_result_dir(settings, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    types = {".json": "application/json", ".zip": "application/zip", ".png": "image/png"}
    for name, data in (files or {}).items():
        (folder / name).write_bytes(data)
        store.add_artifact(
            job_id,
            name,
            f"jobs/{job_id}/{name}",
            hashlib.sha256(data).hexdigest(),
            len(data),
            types.get(Path(name).suffix, "application/octet-stream"),
            worker_id="test-worker",
        )
    return store.finish_job(job_id, "test-worker", result if result is not None else report(job_id))


def error_of(response: Response) -> str:
    """The error code of an error response, checking the body is exactly {code, message}."""
    body = response.json()
    assert set(body) == {"code", "message"}, body
    assert isinstance(body["message"], str) and body["message"]
    return str(body["code"])
