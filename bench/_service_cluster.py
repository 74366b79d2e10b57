"""The service cluster of ``bench/bench_service.py`` and ``bench/bench_scaleout.py``.

The API and worker processes, the trained weights and the queued jobs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.procs import Proc, rankopt_env, stop_all, tails

ROOT = Path(__file__).resolve().parents[1]
P99_GOAL_MS = 20.0
SPEEDUP_GOAL = 1.8
WARMUP_S = 2.0
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT_S = 5.0
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
SPLIT_SEED = 0  # the data split of the trained weights and of every job


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def fmt_load(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values) or "-"


# ---------------------------------------------------------------------- processes
def cpu_seconds(proc: Proc) -> float:
    """User + system CPU seconds of the process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cluster:
    """A database, an artifact folder and the processes running on them."""

    folder: Path
    database_url: str
    procs: list[Proc] = field(default_factory=list)
    # how a process is started: `python <launcher> <args>` (bench_scaleout.py traces it)
    launcher: list[str] = field(default_factory=lambda: ["-m", "worker.cli"])

    def env_vars(self, database_url: str | None = None) -> dict[str, str]:
        return {
            "RANKOPT_DATABASE_URL": database_url or self.database_url,
            "RANKOPT_ARTIFACT_ROOT": str(self.folder / "artifacts"),
            "RANKOPT_DEVICE": "cpu",
            "MKL_NUM_THREADS": "1",
        }

    @property
    def env(self) -> dict[str, str]:
        return rankopt_env(self.env_vars(), ROOT)

    def settings(self) -> Any:
        from service.settings import Settings

        return Settings(database_url=self.database_url, artifact_root=self.folder / "artifacts")

    def start(
        self,
        name: str,
        *args: str,
        nice: int = 0,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        log = self.folder / f"{name}.log"

        def setup() -> None:
            if nice:
                os.nice(nice)
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        proc = Proc(
            name,
            args,
            env={**self.env, **(env or {})},
            log=log,
            cwd=ROOT,
            preexec_fn=setup if nice or cpu is not None else None,
            command=(sys.executable, *self.launcher),
        )
        self.procs.append(proc)
        return proc

    def start_worker(
        self, index: int, nice: int = 0, pin: bool = False, env: dict[str, str] | None = None
    ) -> Proc:
        cpu = sorted(os.sched_getaffinity(0))[index % len(os.sched_getaffinity(0))] if pin else None
        return self.start(
            f"worker-{index}", "worker", "--poll-interval", "0.2", nice=nice, cpu=cpu, env=env
        )

    def start_api(self, port: int) -> Proc:
        return self.start(
            "api", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"
        )

    def stop(self) -> None:
        stop_all(self.procs)

    def tails(self) -> str:
        return tails(self.procs, 30)


@contextlib.contextmanager
def cluster(base_url: str | None, label: str) -> Iterator[Cluster]:
    """A fresh database (SQLite in a temporary folder, or a scratch PostgreSQL database on the
    server of ``base_url``), migrated, with its processes stopped at the end."""
    folder = Path(tempfile.mkdtemp(prefix=f"rankopt-bench-{label}-"))
    scratch: str | None = None
    if base_url is None:
        url = f"sqlite:///{folder}/service.db"
    else:
        import psycopg
        from sqlalchemy.engine import make_url

        scratch = f"rankopt_bench_{uuid.uuid4().hex[:12]}"
        conninfo = make_url(base_url).set(drivername="postgresql")
        with psycopg.connect(
            conninfo.render_as_string(hide_password=False), autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{scratch}"')
        url = make_url(base_url).set(database=scratch).render_as_string(hide_password=False)
    run = Cluster(folder, url)
    try:
        from service.store import Store

        Store.open(url).dispose()  # migrate once, before the processes race to
        yield run
    finally:
        run.stop()
        if scratch is not None:
            import psycopg
            from sqlalchemy.engine import make_url

            conninfo = make_url(base_url or "").set(drivername="postgresql")
            with psycopg.connect(
                conninfo.render_as_string(hide_password=False), autocommit=True
            ) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------- inputs
def train_weights(arch: str, dataset: str, folder: Path) -> Path:
    """``arch`` trained briefly on ``dataset`` (AdamW), saved as safetensors."""
    import torch
    from safetensors.torch import save_file

    from worker.data import load_dataset
    from worker.split_record import DataRecord
    from worker.training import train
    from worker.zoo import get_model

    torch.manual_seed(0)
    data = load_dataset(dataset, split_seed=SPLIT_SEED)
    model = get_model(arch, num_classes=data.num_classes)
    result = train(model, data, epochs=4, optimizer="adamw", lr=0.01)
    path = folder / "weights.safetensors"
    record = DataRecord(dataset=dataset, split_seed=SPLIT_SEED, name=data.name)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=record.to_metadata())
    print(
        f"trained {arch} on {dataset}: validation accuracy {result.final_val_accuracy:.4f}",
        flush=True,
    )
    return path


def job_spec(arch: str, dataset: str, trials: int, epochs: int) -> dict[str, Any]:
    return {
        "arch": arch,
        "dataset": dataset,
        "split_seed": SPLIT_SEED,  # the split the weights were trained on
        "trials": trials,
        "epochs_per_trial": epochs,
        "final_epochs": 1,
        "verify_top": 1,
        "pruner": "none",
        "max_accuracy_drop": 2.0,
    }


def queue_job(run: Cluster, weights: Path, spec: dict[str, Any]) -> tuple[Any, str, str, int]:
    """Queue ``spec`` as the API would (weights copied into the upload folder); the store, the
    job id, and its owner's API key and key id."""
    from service.store import Store

    settings = run.settings()
    store = Store.from_settings(settings)
    key, owner = store.create_api_key(f"bench-{uuid.uuid4().hex[:6]}")
    folder = settings.resolved_upload_dir / f"incoming-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    shutil.copyfile(weights, folder / "weights.safetensors")
    relative = (folder / "weights.safetensors").relative_to(settings.resolved_upload_dir)
    job = store.create_job(owner.id, spec, relative.as_posix(), trials_total=spec["trials"])
    return store, job.id, key, owner.id
