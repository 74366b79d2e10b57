"""The ``/v1/jobs`` routes: submit, list, read, trials, events, cancel, result, delete."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import SQLAlchemyError

from service.api.deps import CurrentKey, OwnedJob, State
from service.api.errors import ApiError
from service.api.events import job_events
from service.api.schemas import (
    AUTH_RESPONSES,
    JOB_RESPONSES,
    ErrorBody,
    JobList,
    JobOut,
    ParetoPoint,
    ResultOut,
    TrialList,
    TrialOut,
    artifact_out,
    job_out,
)
from service.api.submit import FORM_SCHEMA, submit_job
from service.api.trials import delete_study_rows, read_trials, report_of
from service.artifacts import PathEscapeError, confined, job_upload_dir, remove_tree
from service.report_model import RESULT_KEYS
from service.store import JobStatus

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

#: One server-sent event of ``/events`` (OpenAPI 3.1: a text/event-stream schema is per event).
_SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["progress", "end", "error"]},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/JobOut"},
                    {"$ref": "#/components/schemas/ErrorBody"},
                ]
            },
            "description": "progress and end: the job (JobOut); error: {code, message}",
        },
    },
}


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    summary="Submit a compression job",
    openapi_extra={"requestBody": FORM_SCHEMA},
    responses={
        200: {"model": JobOut, "description": "idempotent replay: the job the key created"},
        400: {"model": ErrorBody, "description": "malformed multipart body"},
        **AUTH_RESPONSES,
        413: {"model": ErrorBody, "description": "a file exceeds RANKOPT_MAX_UPLOAD_BYTES"},
        415: {"model": ErrorBody, "description": "not multipart/form-data"},
        422: {
            "model": ErrorBody,
            "description": "invalid spec, weights or dataset; unsafe pickle; data path or "
            "factory not allowed; idempotency conflict",
        },
    },
)
async def create_job(
    request: Request,
    response: Response,
    key: CurrentKey,
    state: State,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="repeat a submission safely: the same key and body return the same job",
        ),
    ] = None,
) -> JobOut:
    """Multipart form: ``spec`` (JSON), ``weights`` file, and ``dataset`` file when
    ``spec.dataset`` is ``"upload"``. Answers 201 with the job and its ``Location``; an
    idempotent replay answers 200 with the first job and ``Idempotent-Replayed: true``."""
    job = await submit_job(request, state.store, state.settings, key.id, idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not job.created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return job_out(job)


@router.get(
    "",
    response_model=JobList,
    summary="List the caller's jobs",
    responses={
        **AUTH_RESPONSES,
        422: {"model": ErrorBody, "description": "bad status, limit or cursor"},
    },
)
def list_jobs(
    key: CurrentKey,
    state: State,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor")] = None,
) -> JobList:
    """The caller's jobs, newest first, one page at a time."""
    jobs, next_cursor = state.store.list_jobs(key.id, status=status, limit=limit, cursor=cursor)
    return JobList(jobs=[job_out(job) for job in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut, summary="A job's status", responses=JOB_RESPONSES)
def get_job(job: OwnedJob) -> JobOut:
    """Status, phase, progress (trials, best so far, ETA) and error."""
    return job_out(job)


@router.get(
    "/{job_id}/trials",
    response_model=TrialList,
    summary="Every trial of a job",
    responses=JOB_RESPONSES,
)
def get_trials(job: OwnedJob, state: State) -> TrialList:
    """Plan, accuracy, compression, state and duration of every trial so far."""
    source, trials = read_trials(state.store, state.settings, job)
    return TrialList(
        job_id=job.id, source=source, trials=[TrialOut.model_validate(t) for t in trials]
    )


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    summary="Server-sent events of a job's progress",
    responses={
        200: {
            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
            "description": "`event: progress` (job JSON) on every change, `: heartbeat` "
            "comments, and `event: end` (final job JSON) when the job is finished; the schema "
            "describes one event",
        },
        **JOB_RESPONSES,
    },
)
def get_events(job: OwnedJob, state: State) -> StreamingResponse:
    """Stream the job's progress until it is SUCCEEDED, CANCELLED or FAILED."""
    return StreamingResponse(
        job_events(state.store, job, poll_s=state.sse_poll_s, heartbeat_s=state.sse_heartbeat_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/{job_id}/cancel", response_model=JobOut, summary="Cancel a job", responses=JOB_RESPONSES
)
def cancel_job(job_id: str, key: CurrentKey, state: State) -> JobOut:
    """Ask to cancel; idempotent. A queued job is CANCELLED at once, a running one becomes
    CANCELLING until its workers stop; a finished job is returned unchanged."""
    return job_out(state.store.request_cancel(job_id, key.id))


@router.get(
    "/{job_id}/result",
    response_model=ResultOut,
    summary="The report of a finished job",
    responses={
        **JOB_RESPONSES,
        409: {
            "model": ErrorBody,
            "description": "not_finished: the job is still running; no_result: it failed or "
            "was cancelled",
        },
    },
)
def get_result(job: OwnedJob, state: State) -> ResultOut:
    """Baseline and final accuracy, params/MACs before and after, the per-layer plan, the
    Pareto front and the artifacts with their SHA-256."""
    if job.status is not JobStatus.SUCCEEDED:
        if job.terminal:
            raise ApiError(
                409,
                "no_result",
                f"job {job.id} is {job.status.value} and has no result"
                + (f": {job.error_message}" if job.error_message else ""),
            )
        raise ApiError(
            409,
            "not_finished",
            f"job {job.id} is {job.status.value}; the result is there once it is SUCCEEDED "
            "(follow /events or poll the job)",
        )
    report = report_of(job.result) or {}
    _, trial_list = read_trials(state.store, state.settings, job)  # for the front's points
    trials = {t.get("number"): t for t in trial_list}
    front = []
    for number in report.get("pareto_front") or []:
        if isinstance(number, int):
            trial = trials.get(number, {})
            front.append(
                ParetoPoint(
                    trial=number,
                    accuracy=trial.get("accuracy"),
                    compression=trial.get("compression"),
                )
            )
    artifacts = state.store.list_artifacts(job.id, job.owner_id)
    served = {key: report[key] for key in RESULT_KEYS if report.get(key) is not None}
    return ResultOut.model_validate(
        {
            **served,  # what an older report lacks (or has as null) gets the model's default
            "job_id": job.id,
            "pareto_front": front,
            "artifacts": [artifact_out(a) for a in artifacts],
        }
    )


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a finished job and its files",
    responses={
        204: {"description": "deleted"},
        **JOB_RESPONSES,
        409: {"model": ErrorBody, "description": "job_not_finished: cancel it first"},
    },
)
def delete_job(job: OwnedJob, state: State) -> Response:
    """Remove a SUCCEEDED, CANCELLED or FAILED job, its uploads and its artifacts."""
    settings = state.settings
    paths = state.store.delete_job(job.id, job.owner_id)
    try:
        delete_study_rows(state.store.engine, job.study_name)
    except SQLAlchemyError as exc:
        logger.warning("job %s: could not delete its Optuna study: %s", job.id, exc)
    try:
        state.artifacts.delete_job(job.id)
    except (ValueError, OSError) as exc:
        logger.warning("job %s: could not remove its results: %s", job.id, exc)
    targets = [(job_upload_dir(settings, job.id), settings.resolved_upload_dir)]
    for relative in paths:
        try:
            targets.append(
                (confined(settings.artifact_root, *relative.split("/")), settings.artifact_root)
            )
        except PathEscapeError:
            logger.warning("job %s: artifact path %r escapes the artifact root", job.id, relative)
    for path, root in targets:
        try:
            remove_tree(path, root)
        except (ValueError, OSError) as exc:
            logger.warning("job %s: could not remove %s: %s", job.id, path, exc)
    logger.info("deleted job %s and its files", job.id)
    return Response(status_code=204)
