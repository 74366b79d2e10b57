"""Pydantic schemas of the REST API's responses (the ORM models live in ``service.store``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.store import ArtifactRecord, JobRecord, JobStatus

__all__ = [
    "AUTH_RESPONSES",
    "JOB_RESPONSES",
    "ArtifactList",
    "ArtifactOut",
    "ErrorBody",
    "ErrorInfo",
    "FinalMeasurement",
    "HealthOut",
    "JobList",
    "JobOut",
    "Measurement",
    "ParetoPoint",
    "Phase",
    "ProgressOut",
    "Ratios",
    "ResultOut",
    "TrialList",
    "TrialOut",
    "artifact_out",
    "job_out",
    "phase_of",
]

Phase = Literal["queued", "prepare", "search", "finalize", "cancel", "done"]

_PHASES: dict[JobStatus, Phase] = {
    JobStatus.QUEUED: "queued",
    JobStatus.PREPARING: "prepare",
    JobStatus.SEARCHING: "search",
    JobStatus.FINALIZING: "finalize",
    JobStatus.CANCELLING: "cancel",
    JobStatus.SUCCEEDED: "done",
    JobStatus.CANCELLED: "done",
    JobStatus.FAILED: "done",
}


def phase_of(status: JobStatus) -> Phase:
    """The phase of the lifecycle a status belongs to."""
    return _PHASES[status]


class ErrorBody(BaseModel):
    """Every error response: a stable machine-readable ``code`` and a human ``message``."""

    code: str = Field(examples=["job_not_found"])
    message: str


#: OpenAPI ``responses`` of every authenticated route, and of every route on one job.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing, unknown or revoked API key"},
}
JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    404: {"model": ErrorBody, "description": "no such job, or another key's"},
    422: {"model": ErrorBody, "description": "invalid request"},
}


class ErrorInfo(BaseModel):
    """Why a job failed."""

    code: str | None
    message: str | None


class ProgressOut(BaseModel):
    """Search progress; ``best_*`` is the best feasible trial so far."""

    trials_done: int
    trials_running: int
    trials_total: int
    timeout_s: float | None
    best_compression: float | None
    best_accuracy: float | None
    baseline_accuracy: float | None
    eta_s: float | None
    search_started_at: datetime | None
    deadline_at: datetime | None


class JobOut(BaseModel):
    """A job as its owner sees it."""

    id: str
    status: JobStatus
    phase: Phase
    spec: dict[str, Any]
    study_name: str
    progress: ProgressOut
    error: ErrorInfo | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def job_out(job: JobRecord) -> JobOut:
    """The public view of a job."""
    public = job.to_public()
    return JobOut.model_validate({**public, "phase": phase_of(job.status)})


class JobList(BaseModel):
    """One page of the caller's jobs, newest first."""

    jobs: list[JobOut]
    next_cursor: str | None = Field(
        description="pass as ?cursor= to get the next page; null on the last page"
    )


class TrialOut(BaseModel):
    """One trial of a job's search."""

    model_config = ConfigDict(extra="allow")

    number: int
    state: str = Field(examples=["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"])
    seed: str | None = Field(default=None, description="label of an EVBMF seed trial")
    params: dict[str, Any] = Field(default_factory=dict)
    plan: dict[str, Any] | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    compression: float | None = None
    params_count: int | None = None
    macs: int | None = None
    latency_s: float | None = None
    latency_ratio: float | None = Field(
        default=None, description="measured latency over the original's (with max_latency_ratio)"
    )
    latency_met: bool | None = Field(
        default=None, description="within max_latency_ratio (none: no latency constraint)"
    )
    duration_s: float | None = None
    worker: str | None = Field(default=None, description="the worker process that ran it")


class TrialList(BaseModel):
    """Every trial of a job and where they were read from."""

    job_id: str
    source: Literal["result", "report", "study", "none"] = Field(
        description="result/report: the finished job's report; study: the live Optuna study"
    )
    trials: list[TrialOut]


class ArtifactOut(BaseModel):
    """A file a finished job produced."""

    name: str
    sha256: str
    size: int
    content_type: str
    created_at: datetime
    url: str


def artifact_out(artifact: ArtifactRecord) -> ArtifactOut:
    """The public view of an artifact, with its download URL (relative to the API root)."""
    return ArtifactOut.model_validate(
        {
            **artifact.to_public(),
            "url": f"/v1/jobs/{artifact.job_id}/artifacts/{artifact.name}",
        }
    )


class ArtifactList(BaseModel):
    """A job's artifacts by name."""

    job_id: str
    artifacts: list[ArtifactOut]


class Measurement(BaseModel):
    """Accuracy and cost of one model."""

    model_config = ConfigDict(extra="allow")

    accuracy: float | None = Field(default=None, description="on the validation split")
    val_accuracy: float | None = Field(default=None, description="on the validation split")
    test_accuracy: float | None = Field(
        default=None, description="on the held-out test split (none: the data has no test split)"
    )
    params: int | None = None
    macs: int | None = None
    latency_s: float | None = None


class FinalMeasurement(Measurement):
    """Accuracy and cost of the compressed model."""

    accuracy_drop: float | None = Field(
        default=None, description="in accuracy points, on validation (what the tolerance judges)"
    )
    val_accuracy_drop: float | None = Field(
        default=None, description="in accuracy points, on the validation split"
    )
    test_accuracy_drop: float | None = Field(
        default=None, description="in accuracy points, on the held-out test split (none: no test)"
    )
    test_constraint_met: bool | None = Field(
        default=None,
        description="whether the test drop is within the tolerance too (none: no test split)",
    )
    latency_ratio: float | None = Field(
        default=None, description="measured latency over the original's (under 1: faster)"
    )
    max_latency_ratio: float | None = Field(
        default=None, description="the job's latency limit (none: no latency constraint)"
    )
    latency_constraint_met: bool | None = Field(
        default=None, description="within max_latency_ratio (none: no latency constraint)"
    )
    constraint_met: bool | None = Field(
        default=None, description="within the tolerance and the latency limit, if any"
    )


class Ratios(BaseModel):
    """Original / compressed (higher is smaller or faster)."""

    model_config = ConfigDict(extra="allow")

    params: float | None = None
    macs: float | None = None
    latency: float | None = None


class ParetoPoint(BaseModel):
    """A trial on the accuracy/compression Pareto front."""

    trial: int
    accuracy: float | None = None
    compression: float | None = None


class ResultOut(BaseModel):
    """The report of a SUCCEEDED job."""

    job_id: str
    baseline: Measurement | None
    final: FinalMeasurement | None
    ratios: Ratios | None
    found_feasible: bool | None
    kept_original_reason: str | None = Field(
        default=None, description="why the original model was kept, when it was"
    )
    chosen_trial: int | None
    plan: dict[str, Any] | None
    layers: list[dict[str, Any]]
    pareto_front: list[ParetoPoint]
    verification: list[dict[str, Any]] = Field(
        default_factory=list, description="the candidates fine-tuned longer before choosing"
    )
    arch: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    test: dict[str, Any] | None = Field(
        default=None,
        description="baseline_accuracy, final_accuracy, accuracy_drop, constraint_met and n on "
        "the held-out test split, read only after the choice (none: no test split, see "
        "test_note)",
    )
    test_note: str | None = Field(
        default=None, description="where the test split came from, or why there is none"
    )
    search: dict[str, Any] | None = Field(default=None, description="the search configuration")
    artifacts: list[ArtifactOut]


class HealthOut(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "ready"]
