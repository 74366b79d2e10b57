"""``rankopt`` service subcommands: keys and db against a SQLite file, client commands against
an in-process app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

import service.cli.commands as cli_service
from service.api import create_app
from service.client import RankoptClient
from service.settings import Settings
from service.store import Store
from tests.service.api_helpers import finish
from worker.cli import EXIT_USAGE, main


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("RANKOPT_DATABASE_URL", f"sqlite:///{tmp_path}/db/cli.db")
    monkeypatch.setenv("RANKOPT_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.delenv("RANKOPT_API_KEY", raising=False)
    monkeypatch.delenv("RANKOPT_URL", raising=False)
    return Settings()


@pytest.fixture
def service(env: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The client commands talk to an in-process app over the TestClient transport."""
    store = Store.from_settings(env)
    key = store.create_api_key("cli")[0]
    app = create_app(env, store, sse_poll_s=0.01, sse_heartbeat_s=0.05)
    with TestClient(app) as http:
        monkeypatch.setattr(
            cli_service, "make_client", lambda: RankoptClient("http://testserver", key, client=http)
        )
        yield store
    store.dispose()


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "w.pt"
    torch.save(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3)).state_dict(), path)
    return path


def test_keys_and_db(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade"]) == 0
    assert "revision" in capsys.readouterr().out
    assert main(["keys", "create", "--name", "ci"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert key.startswith("rk_") and len(out.splitlines()) == 1
    assert "cannot be shown again" in err
    store = Store.from_settings(env)
    assert store.authenticate(key) is not None

    assert main(["keys", "create", "--name", "ci"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "exists already" in err

    assert main(["keys", "list"]) == 0
    out = capsys.readouterr().out
    assert "ci" in out and key not in out and key[:8] in out
    assert main(["keys", "revoke", "--name", "ci"]) == 0
    assert store.authenticate(key) is None
    assert main(["keys", "revoke", "--name", "nobody"]) == EXIT_USAGE
    store.dispose()


def test_client_commands_need_a_key(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "RANKOPT_API_KEY" in err


def test_submit_status_list_cancel(
    service: Store, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["submit", "--arch", "rankopt:lenet5", "--weights", str(weights), "--dataset", "digits",
            "--trials", "7", "--max-accuracy-drop", "0.5", "--export", "onnx",
            "--idempotency-key", "once"]  # fmt: skip
    assert main(args) == 0
    job_id = capsys.readouterr().out.strip()
    assert len(job_id) == 32
    job = service.load_job(job_id)
    assert job.trials_total == 7 and job.spec["max_accuracy_drop"] == 0.5
    assert job.spec["exports"] == ["onnx"] and job.spec["dataset"] == "digits"
    assert main(args) == 0 and capsys.readouterr().out.strip() == job_id  # idempotent

    data = tmp_path / "data.npz"
    x, y = np.zeros((4, 1, 5, 5), np.float32), np.arange(4) % 2
    np.savez(data, x_train=x, y_train=y, x_val=x, y_val=y)
    assert main(["submit", "--arch", "rankopt:lenet5", "--weights", str(weights),
                 "--dataset", str(data)]) == 0  # fmt: skip
    upload_id = capsys.readouterr().out.strip()
    assert service.load_job(upload_id).spec["dataset"] == "upload"

    assert main(["status", job_id]) == 0
    out = capsys.readouterr().out
    assert "QUEUED" in out and "0/7" in out
    assert main(["status", job_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == job_id

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["ID", "STATUS"] and len(lines) == 3
    assert lines[1].startswith(upload_id)

    assert main(["cancel", job_id]) == 0
    assert capsys.readouterr().out.strip() == f"job {job_id} CANCELLED"
    assert main(["list", "--status", "CANCELLED", "--json"]) == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)["jobs"]] == [job_id]
    assert main(["watch", job_id]) == 1
    assert "CANCELLED" in capsys.readouterr().out


def test_bad_submissions_are_one_line(
    service: Store, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", "--arch", "rankopt:lenet5", "--weights", str(tmp_path / "no.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["submit", "--arch", "evil", "--weights", str(weights)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid_spec" in err and "HTTP 422" in err
    assert main(["status", "0" * 32]) == 1
    assert "job_not_found" in capsys.readouterr().err


def test_watch_download_delete_a_finished_job(
    service: Store,
    env: Settings,
    weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["submit", "--arch", "rankopt:lenet5", "--weights", str(weights)]) == 0
    job_id = capsys.readouterr().out.strip()
    finish(service, env, job_id, {"model.zip": b"zip bytes", "report.json": b"{}"})
    assert main(["watch", job_id]) == 0
    assert f"job {job_id} SUCCEEDED" in capsys.readouterr().out
    assert main(["result", job_id]) == 0
    assert json.loads(capsys.readouterr().out)["final"]["accuracy"] == 0.9

    out = tmp_path / "dl"
    assert main(["download", job_id, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.zip", "report.json"]
    assert (out / "model.zip").read_bytes() == b"zip bytes"
    capsys.readouterr()
    assert main(["download", job_id, "--name", "pareto.png", "--out", str(out)]) == 1
    assert "artifact_not_found" in capsys.readouterr().err

    assert main(["delete", job_id]) == 0
    assert capsys.readouterr().out.strip() == f"deleted job {job_id}"
    assert service.list_jobs(1)[0] == []


def test_client_commands_do_not_import_torch() -> None:
    """``rankopt submit/list/status/...`` start fast: parsing and the client need no torch."""
    import subprocess
    import sys

    code = (
        "import sys; from worker.cli import _parser; "
        "args = _parser().parse_args(['list']); import service.cli; "
        "heavy = [m for m in ('torch', 'optuna', 'worker.pool') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
