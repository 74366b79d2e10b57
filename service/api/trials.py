"""A job's trials: from its report once finished, else straight from its Optuna study's tables.

The API imports no Optuna: the live study ``job-<id>`` is read with SQLAlchemy Core from the
tables Optuna's RDB storage keeps in the same database (``studies``, ``trials``,
``trial_params``, ``trial_user_attributes``). The worker's objective stores ``plan``,
``accuracy``, ``accuracy_drop``, ``compression``, ``params_count``, ``macs``, ``latency_s``,
``latency_ratio``, ``latency_met`` and ``seconds`` as user attributes (JSON text), and a seed
trial's label under ``seed``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, MetaData, column, delete, inspect, select, table
from sqlalchemy.exc import SQLAlchemyError

from service.artifacts import PathEscapeError, confined
from service.settings import Settings
from service.store import ArtifactNotFound, JobRecord, Store, read_only

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

_studies = table("studies", column("study_id"), column("study_name"))
_trials = table(
    "trials",
    column("trial_id"),
    column("number"),
    column("study_id"),
    column("state"),
    column("datetime_start"),
    column("datetime_complete"),
)
_params = table(
    "trial_params",
    column("trial_id"),
    column("param_name"),
    column("param_value"),
    column("distribution_json"),
)
_attrs = table("trial_user_attributes", column("trial_id"), column("key"), column("value_json"))
_OPTUNA_TABLES = ("studies", "trials", "trial_params", "trial_user_attributes")


def report_of(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The report inside a job's stored result (the result itself, or its ``report`` key)."""
    if not isinstance(result, dict):
        return None
    nested = result.get("report")
    return nested if isinstance(nested, dict) else result


def _decode_param(value: float | None, distribution_json: str | None) -> Any:
    """Optuna stores a parameter as a float; categorical ones as the index of the choice."""
    if value is None or not distribution_json:
        return value
    try:
        distribution = json.loads(distribution_json)
    except json.JSONDecodeError:
        return value
    name = distribution.get("name", "")
    attributes = distribution.get("attributes", {})
    if name == "CategoricalDistribution":
        choices = attributes.get("choices", [])
        index = int(value)
        return choices[index] if 0 <= index < len(choices) else value
    if name in ("IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"):
        return int(value)
    return value


def _seconds(start: Any, end: Any) -> float | None:
    if isinstance(start, str):
        start = datetime.fromisoformat(start)
    if isinstance(end, str):
        end = datetime.fromisoformat(end)
    if isinstance(start, datetime) and isinstance(end, datetime):
        return (end - start).total_seconds()
    return None


def read_study_trials(engine: Engine, study_name: str) -> list[dict[str, Any]] | None:
    """The trials of the Optuna study ``study_name`` in ``engine``'s database, by number, or
    ``None`` when there is no such study (not created yet, or deleted)."""
    try:
        names = set(inspect(engine).get_table_names())
        if not set(_OPTUNA_TABLES) <= names:
            return None
        with read_only(engine).connect() as conn:
            study_id = conn.execute(
                select(_studies.c.study_id).where(_studies.c.study_name == study_name)
            ).scalar_one_or_none()
            if study_id is None:
                return None
            trial_rows = conn.execute(
                select(_trials).where(_trials.c.study_id == study_id).order_by(_trials.c.number)
            ).all()
            ids = [row.trial_id for row in trial_rows]
            params: dict[int, dict[str, Any]] = {i: {} for i in ids}
            attrs: dict[int, dict[str, Any]] = {i: {} for i in ids}
            if ids:
                for row in conn.execute(select(_params).where(_params.c.trial_id.in_(ids))):
                    params[row.trial_id][row.param_name] = _decode_param(
                        row.param_value, row.distribution_json
                    )
                for row in conn.execute(select(_attrs).where(_attrs.c.trial_id.in_(ids))):
                    try:
                        attrs[row.trial_id][row.key] = json.loads(row.value_json)
                    except (TypeError, json.JSONDecodeError):
                        attrs[row.trial_id][row.key] = row.value_json
    except SQLAlchemyError as exc:
        logger.warning("cannot read the trials of study %s: %s", study_name, exc)
        return None
    trials = []
    for row in trial_rows:
        user = attrs[row.trial_id]
        state = row.state.name if hasattr(row.state, "name") else str(row.state)
        duration = _seconds(row.datetime_start, row.datetime_complete)
        if duration is None and isinstance(user.get("seconds"), (int, float)):
            duration = float(user["seconds"])
        trials.append(
            {
                "number": row.number,
                "state": state,
                "seed": user.get(SEED_ATTR),
                "params": params[row.trial_id],
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


def delete_study_rows(engine: Engine, study_name: str) -> int:
    """Delete the Optuna study ``study_name`` and everything under it, with plain SQL.

    Optuna's tables hang off ``trials.trial_id`` and ``studies.study_id``; every table of the
    database with one of those columns is cleaned (children first), so schema additions in
    later Optuna versions are covered. Returns the number of trials removed (0 when there is
    no such study).
    """
    meta = MetaData()
    meta.reflect(bind=engine)
    studies, trials = meta.tables.get("studies"), meta.tables.get("trials")
    if studies is None or trials is None:
        return 0
    with engine.begin() as conn:
        study_id = conn.execute(
            select(studies.c.study_id).where(studies.c.study_name == study_name)
        ).scalar_one_or_none()
        if study_id is None:
            return 0
        trial_ids = select(trials.c.trial_id).where(trials.c.study_id == study_id)
        count = len(conn.execute(trial_ids).all())
        for name, tbl in meta.tables.items():
            if name != "trials" and "trial_id" in tbl.c:
                conn.execute(delete(tbl).where(tbl.c.trial_id.in_(trial_ids)))
        conn.execute(delete(trials).where(trials.c.study_id == study_id))
        for name, tbl in meta.tables.items():
            if name not in ("studies", "trials") and "study_id" in tbl.c:
                conn.execute(delete(tbl).where(tbl.c.study_id == study_id))
        conn.execute(delete(studies).where(studies.c.study_id == study_id))
    logger.info("deleted Optuna study %s (%d trials)", study_name, count)
    return count
