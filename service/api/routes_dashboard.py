"""``GET /v1/jobs/{id}/dashboard``: where the job's Optuna study is in optuna-dashboard.

The operator sets ``RANKOPT_DASHBOARD_URL`` to an optuna-dashboard reading the same database;
the study's page there is ``<url>/dashboard/studies/<study_id>``. The study id is read from
Optuna's ``studies`` table with SQLAlchemy Core (the API imports no Optuna).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import Engine, column, select, table
from sqlalchemy.exc import SQLAlchemyError

from service.api.deps import OwnedJob, State
from service.api.schemas import JOB_RESPONSES
from service.store import is_database_unavailable, read_only

__all__ = ["DashboardOut", "router", "study_id_of"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_studies = table("studies", column("study_id"), column("study_name"))


class DashboardOut(BaseModel):
    """The job's Optuna study and its page in optuna-dashboard."""

    study_name: str = Field(description="the study in the shared database (optuna.load_study)")
    study_id: int | None = Field(description="Optuna's id of the study; null until it exists")
    url: str | None = Field(
        description="the study's page in optuna-dashboard; null when RANKOPT_DASHBOARD_URL is "
        "not set (or, before the study exists, the dashboard's home page)"
    )


def study_id_of(engine: Engine, study_name: str) -> int | None:
    """Optuna's id of the study ``study_name``, or None (no such study, or no Optuna tables)."""
    try:
        with read_only(engine).connect() as conn:
            value = conn.execute(
                select(_studies.c.study_id).where(_studies.c.study_name == study_name)
            ).scalar_one_or_none()
    except SQLAlchemyError as exc:
        if is_database_unavailable(exc):
            raise  # a 503 like every other route's
        logger.debug("no study id for %s: %s", study_name, exc)
        return None
    return int(value) if value is not None else None


@router.get(
    "/{job_id}/dashboard",
    response_model=DashboardOut,
    summary="The job's study in optuna-dashboard",
    responses=JOB_RESPONSES,
)
def get_dashboard(job: OwnedJob, state: State) -> DashboardOut:
    """The job's study name and id, and its optuna-dashboard page when one is configured."""
    study_id = study_id_of(state.store.engine, job.study_name)
    base = state.settings.dashboard_url
    url = None
    if base is not None:
        url = f"{base}/dashboard/studies/{study_id}" if study_id is not None else f"{base}/"
    return DashboardOut(study_name=job.study_name, study_id=study_id, url=url)
