"""``GET /v1/jobs/{id}/dashboard``: where the job's Optuna study is in optuna-dashboard.

The operator sets ``RANKOPT_DASHBOARD_URL`` to an optuna-dashboard reading the same database;
the study's page there is ``<url>/dashboard/studies/<study_id>``. The study id is read from
Optuna's ``studies`` table by :mod:`service.store.optuna_tables` (the API imports no Optuna).
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.api.deps import OwnedJob, State
from service.api.schemas import JOB_RESPONSES
from service.store.optuna_tables import study_id_of

__all__ = ["DashboardOut", "router", "study_id_of"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class DashboardOut(BaseModel):
    """The job's Optuna study and its page in optuna-dashboard."""

    study_name: str = Field(description="the study in the shared database (optuna.load_study)")
    study_id: int | None = Field(description="Optuna's id of the study; null until it exists")
    url: str | None = Field(
        description="the study's page in optuna-dashboard; null when RANKOPT_DASHBOARD_URL is "
        "not set (or, before the study exists, the dashboard's home page)"
    )


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
