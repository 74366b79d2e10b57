"""A job's trials: from its report once finished, else straight from its Optuna study's tables.

The API imports no Optuna: the live study ``job-<id>`` is read by
:mod:`service.store.optuna_tables` (the one module that queries Optuna's tables). The worker's
objective stores ``plan``, ``accuracy``, ``accuracy_drop``, ``compression``, ``params_count``,
``macs``, ``latency_s``, ``latency_ratio``, ``latency_met`` and ``seconds`` as user attributes,
and a seed trial's label under ``seed``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine

from service.artifacts import PathEscapeError, confined
from service.settings import Settings
from service.store import ArtifactNotFound, JobRecord, Store
from service.store.optuna_tables import delete_study_rows
from service.store.optuna_tables import read_study_trials as _study_trials

__all__ = [
    "SEED_ATTR",
    "TrialSource",
    "delete_study_rows",
    "read_study_trials",
    "read_trials",
    "report_of",
]

logger = logging.getLogger(__name__)

#: Key of the seed label (``worker.search.SEED_ATTR``; the API must not import the worker).
SEED_ATTR = "seed"
REPORT_ARTIFACT = "report.json"
MAX_REPORT_BYTES = 64 * 1024 * 1024

TrialSource = Literal["result", "report", "study", "none"]


def report_of(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The report inside a job's stored result (the result itself, or its ``report`` key)."""
    if not isinstance(result, dict):
        return None
    nested = result.get("report")
    return nested if isinstance(nested, dict) else result


def read_study_trials(engine: Engine, study_name: str) -> list[dict[str, Any]] | None:
    """The trials of the Optuna study ``study_name`` in ``engine``'s database, by number, as
    the API shows them, or ``None`` when there is no such study (not created yet, or deleted)."""
    rows = _study_trials(engine, study_name)
    if rows is None:
        return None
    trials = []
    for row in rows:
        user = row.user_attrs
        duration = row.duration_s
        if duration is None and isinstance(user.get("seconds"), (int, float)):
            duration = float(user["seconds"])
        trials.append(
            {
                "number": row.number,
                "state": row.state,
                "seed": user.get(SEED_ATTR),
                "params": row.params,
                "plan": user.get("plan"),
                "accuracy": user.get("accuracy"),
                "accuracy_drop": user.get("accuracy_drop"),
                "compression": user.get("compression"),
                "params_count": user.get("params_count"),
                "macs": user.get("macs"),
                "latency_s": user.get("latency_s"),
                "latency_ratio": user.get("latency_ratio"),
                "latency_met": user.get("latency_met"),
                "duration_s": duration,
                "worker": user.get("worker"),
            }
        )
    return trials


def _report_file(store: Store, settings: Settings, job: JobRecord) -> dict[str, Any] | None:
    try:
        artifact = store.get_artifact(job.id, job.owner_id, REPORT_ARTIFACT)
        path: Path = confined(settings.artifact_root, *artifact.path.split("/"))
        if path.stat().st_size > MAX_REPORT_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ArtifactNotFound, PathEscapeError, OSError, ValueError) as exc:
        logger.debug("job %s: no readable report.json: %s", job.id, exc)
        return None
    return data if isinstance(data, dict) else None


def read_trials(
    store: Store, settings: Settings, job: JobRecord
) -> tuple[TrialSource, list[dict[str, Any]]]:
    """Every trial of ``job`` and where they came from.

    A finished job's report (its stored result, else its ``report.json`` artifact) is preferred;
    otherwise, or when the report lists no trials, the live Optuna study is read.
    """
    report = report_of(job.result)
    if report is not None and isinstance(report.get("trials"), list):
        return "result", [t for t in report["trials"] if isinstance(t, dict)]
    if job.terminal:
        from_file = _report_file(store, settings, job)
        if from_file is not None and isinstance(from_file.get("trials"), list):
            return "report", [t for t in from_file["trials"] if isinstance(t, dict)]
    live = read_study_trials(store.engine, job.study_name)
    if live is not None:
        return "study", live
    return "none", []
