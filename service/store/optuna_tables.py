"""Every SQL statement against Optuna's own tables (this package imports no Optuna).

Optuna's RDB storage keeps its tables, unprefixed, in the same database as the store:
``studies``, ``trials``, ``trial_params``, ``trial_user_attributes``, ``trial_heartbeats`` and
more. The API reads a live study from them, deletes a study's rows, and looks up a study's
id; the worker pool's reaper asks which trials ever sent a heartbeat, and a trial's heartbeat
asks whether its trial still runs. All of it is here, with
SQLAlchemy Core on lightweight table stubs (or reflection, to delete), so that a change of
Optuna's schema has one place to be followed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, MetaData, column, delete, inspect, select, table
from sqlalchemy.exc import SQLAlchemyError

from service.store.engine import is_database_unavailable, read_only

__all__ = [
    "StudyTrial",
    "delete_study_rows",
    "read_study_trials",
    "study_id_of",
    "trial_state",
    "trials_with_heartbeat",
]

logger = logging.getLogger(__name__)

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
_heartbeats = table("trial_heartbeats", column("trial_id"))
_TRIAL_TABLES = ("studies", "trials", "trial_params", "trial_user_attributes")


@dataclass(frozen=True)
class StudyTrial:
    """One trial as Optuna's tables hold it, decoded: ``params`` by name (categorical choices
    and integers restored), ``user_attrs`` parsed from JSON."""

    number: int
    state: str
    datetime_start: datetime | None
    datetime_complete: datetime | None
    params: dict[str, Any]
    user_attrs: dict[str, Any]

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to completion, when both are known."""
        if self.datetime_start is None or self.datetime_complete is None:
            return None
        return (self.datetime_complete - self.datetime_start).total_seconds()


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


def _moment(value: Any) -> datetime | None:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if isinstance(value, datetime) else None


def read_study_trials(engine: Engine, study_name: str) -> list[StudyTrial] | None:
    """The trials of the Optuna study ``study_name`` in ``engine``'s database, by number, or
    ``None`` when there is no such study (not created yet, or deleted) or it cannot be read."""
    try:
        names = set(inspect(engine).get_table_names())
        if not set(_TRIAL_TABLES) <= names:
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
    return [
        StudyTrial(
            number=row.number,
            state=row.state.name if hasattr(row.state, "name") else str(row.state),
            datetime_start=_moment(row.datetime_start),
            datetime_complete=_moment(row.datetime_complete),
            params=params[row.trial_id],
            user_attrs=attrs[row.trial_id],
        )
        for row in trial_rows
    ]


def study_id_of(engine: Engine, study_name: str) -> int | None:
    """Optuna's id of the study ``study_name``, or None (no such study, or no Optuna tables).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database is unreachable
            (:func:`~service.store.engine.is_database_unavailable`).
    """
    try:
        with read_only(engine).connect() as conn:
            value = conn.execute(
                select(_studies.c.study_id).where(_studies.c.study_name == study_name)
            ).scalar_one_or_none()
    except SQLAlchemyError as exc:
        if is_database_unavailable(exc):
            raise
        logger.debug("no study id for %s: %s", study_name, exc)
        return None
    return int(value) if value is not None else None


def trials_with_heartbeat(engine: Engine, trial_ids: Collection[int]) -> set[int]:
    """The trials among ``trial_ids`` that recorded at least one heartbeat in Optuna's
    ``trial_heartbeats`` table of ``engine``'s database."""
    if not trial_ids:
        return set()
    column_ = _heartbeats.c.trial_id
    with read_only(engine).connect() as conn:
        rows = conn.execute(select(column_).where(column_.in_(list(trial_ids))))
        return {int(row[0]) for row in rows}


def trial_state(engine: Engine, trial_id: int) -> str | None:
    """The state name (``RUNNING``, ``FAIL``, ...) of the trial with Optuna's ``trial_id`` in
    ``engine``'s database; None when there is no such trial (its study was deleted)."""
    with read_only(engine).connect() as conn:
        row = conn.execute(select(_trials.c.state).where(_trials.c.trial_id == trial_id)).first()
    if row is None:
        return None
    state = row[0]
    return str(getattr(state, "name", state))


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
