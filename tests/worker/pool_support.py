"""Helpers of the worker-pool tests: scratch settings, a trained model, job submission."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial
from safetensors.torch import save_file

from service.settings import Settings
from service.store import ApiKeyRecord, JobRecord, Store, normalize_url
from worker.data import load_dataset
from worker.training import train
from worker.zoo import get_model

ARCH = "rankopt:tinycnn"
BASE_SPEC: dict[str, Any] = {
    "arch": ARCH,
    "dataset": "digits",
    "trials": 4,
    "epochs_per_trial": 1,
    "final_epochs": 1,
    "batch_size": 64,
    "max_accuracy_drop": 3.0,
    "verify_top": 1,
    "pruner": "none",
}


def train_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tinycnn trained on digits (about 97% in a few seconds), saved as safetensors once per
    test session."""
    folder = tmp_path_factory.getbasetemp() / "pool-weights"
    path = folder / "tinycnn.safetensors"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = get_model(ARCH, num_classes=10)
    result = train(model, load_dataset("digits"), epochs=20, optimizer="adamw", lr=0.01)
    assert result.final_val_accuracy > 0.93
    tmp = folder / "tinycnn.tmp.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)
    return path


def make_settings(root: Path, database_url: str | None = None, **overrides: Any) -> Settings:
    """Settings on ``root`` with short leases and heartbeats."""
    values: dict[str, Any] = {
        "database_url": database_url or f"sqlite:///{root}/pool.db",
        "artifact_root": root / "artifacts",
        "lease_seconds": 2.0,
        "heartbeat_seconds": 0.5,
        "trial_heartbeat_seconds": 1.0,
        "device": "cpu",
        "max_trial_failures": 3,
    }
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as RANKOPT_* environment variables."""
    return {
        "RANKOPT_DATABASE_URL": settings.database_url,
        "RANKOPT_ARTIFACT_ROOT": str(settings.artifact_root),
        "RANKOPT_LEASE_SECONDS": str(settings.lease_seconds),
        "RANKOPT_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
        "RANKOPT_TRIAL_HEARTBEAT_SECONDS": str(settings.trial_heartbeat_seconds),
        "RANKOPT_DEVICE": settings.device,
        "RANKOPT_MAX_TRIAL_FAILURES": str(settings.max_trial_failures),
    }


def submit(
    store: Store,
    settings: Settings,
    owner: ApiKeyRecord,
    weights: Path | bytes,
    *,
    suffix: str = ".safetensors",
    **spec_overrides: Any,
) -> JobRecord:
    """Queue a job as the API would: the weights copied into the upload folder."""
    spec = {**BASE_SPEC, **spec_overrides}
    folder = settings.resolved_upload_dir / f"incoming-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    target = folder / f"weights{suffix}"
    if isinstance(weights, bytes):
        target.write_bytes(weights)
    else:
        shutil.copyfile(weights, target)
    relative = target.relative_to(settings.resolved_upload_dir).as_posix()
    trials = int(spec.get("trials", 4))
    return store.create_job(owner.id, spec, relative, trials_total=trials)


def storage_of(settings: Settings) -> optuna.storages.RDBStorage:
    """A plain Optuna storage on the test database, for looking at studies."""
    url = normalize_url(settings.database_url)
    sqlite = url.get_backend_name() == "sqlite"
    return optuna.storages.RDBStorage(
        url.render_as_string(hide_password=False),
        engine_kwargs={"connect_args": {"timeout": 60.0}} if sqlite else {},
    )


def trials_of(storage: optuna.storages.BaseStorage, study_name: str) -> list[FrozenTrial]:
    """The study's trials, or [] while it does not exist."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return []
    return storage.get_all_trials(study_id, deepcopy=False)


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
