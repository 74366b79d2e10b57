"""Settings: defaults, environment parsing, validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import MIB, Settings, get_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RANKOPT_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()


def test_defaults() -> None:
    s = Settings()
    assert s.database_url == "sqlite:///./rankopt.db"
    assert s.artifact_root == Path("./rankopt-artifacts")
    assert s.upload_dir == Path("./rankopt-artifacts/uploads")
    assert s.resolved_upload_dir == s.upload_dir
    assert s.max_upload_bytes == 512 * MIB
    assert s.max_dataset_bytes > 0
    assert s.allowed_data_roots == []
    assert s.allowed_factories == []
    assert (s.lease_seconds, s.heartbeat_seconds, s.trial_heartbeat_seconds) == (60, 10, 30)
    assert s.device == "auto"
    assert s.max_trial_failures == 5


def test_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RANKOPT_DATABASE_URL", "postgresql://u@db:5432/rankopt")
    monkeypatch.setenv("RANKOPT_ARTIFACT_ROOT", str(tmp_path / "art"))
    monkeypatch.setenv("RANKOPT_LEASE_SECONDS", "30")
    monkeypatch.setenv("RANKOPT_HEARTBEAT_SECONDS", "5")
    monkeypatch.setenv("RANKOPT_MAX_UPLOAD_BYTES", "1024")
    monkeypatch.setenv(
        "RANKOPT_ALLOWED_DATA_ROOTS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}"
    )
    monkeypatch.setenv("RANKOPT_ALLOWED_FACTORIES", "pkg.mod:build, other:make")
    monkeypatch.setenv("RANKOPT_DEVICE", "CUDA:1")
    s = Settings()
    assert s.database_url == "postgresql://u@db:5432/rankopt"
    assert s.upload_dir == tmp_path / "art" / "uploads"
    assert s.lease_seconds == 30 and s.heartbeat_seconds == 5
    assert s.max_upload_bytes == 1024
    assert s.allowed_data_roots == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    assert s.allowed_factories == ["pkg.mod:build", "other:make"]
    assert s.device == "cuda:1"


def test_lists_accept_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RANKOPT_ALLOWED_DATA_ROOTS", f'["{tmp_path}"]')
    monkeypatch.setenv("RANKOPT_ALLOWED_FACTORIES", '["a.b:c"]')
    s = Settings()
    assert s.allowed_data_roots == [tmp_path.resolve()]
    assert s.allowed_factories == ["a.b:c"]


def test_explicit_upload_dir(tmp_path: Path) -> None:
    assert Settings(upload_dir=tmp_path).upload_dir == tmp_path


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANKOPT_HEARTBEAT_SECONDS": "60"}, "heartbeat_seconds"),
        ({"RANKOPT_LEASE_SECONDS": "5"}, "must be smaller than"),
        ({"RANKOPT_MAX_UPLOAD_BYTES": "0"}, "max_upload_bytes"),
        ({"RANKOPT_MAX_DATASET_BYTES": "-1"}, "max_dataset_bytes"),
        ({"RANKOPT_LEASE_SECONDS": "-1"}, "lease_seconds"),
        ({"RANKOPT_MAX_TRIAL_FAILURES": "0"}, "max_trial_failures"),
        ({"RANKOPT_ALLOWED_FACTORIES": "not a factory"}, "package.module:function"),
        ({"RANKOPT_ALLOWED_FACTORIES": "[broken"}, "JSON"),
        ({"RANKOPT_DEVICE": "tpu"}, "device"),
        ({"RANKOPT_DATABASE_URL": "rankopt.db"}, "SQLAlchemy URL"),
    ],
)
def test_invalid_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_get_settings_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKOPT_DEVICE", "cpu")
    first = get_settings()
    assert first.device == "cpu"
    assert get_settings() is first
    get_settings.cache_clear()
    assert get_settings() is not first
