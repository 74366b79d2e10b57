"""Pydantic schemas of the REST API's responses (the ORM models live in ``service.store``).

The report's models (:class:`ResultOut`, :class:`TrialOut` and what they nest) are not written
out here: they are made at import from the dataclasses of :mod:`service.report_model`, the one
definition of the report's shape (:func:`served_model`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import operator
from collections.abc import Collection
from datetime import datetime
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from service.report_model import FILE_ONLY_KEYS, LayerRow, Report, TrialRecord
from service.store import ArtifactRecord, JobRecord, JobStatus

__all__ = [
    "AUTH_RESPONSES",
    "JOB_RESPONSES",
    "ArtifactList",
    "ArtifactOut",
    "ErrorBody",
    "ErrorInfo",
    "HealthOut",
    "JobList",
    "JobOut",
    "ParetoPoint",
    "Phase",
    "ProgressOut",
    "ResultOut",
    "TrialList",
    "TrialOut",
    "artifact_out",
    "job_out",
    "phase_of",
    "served_model",
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


class ParetoPoint(BaseModel):
    """A trial on the accuracy/compression Pareto front."""

    trial: int
    accuracy: float | None = None
    compression: float | None = None


def _served_type(hint: Any) -> Any:
    """``hint`` with every report dataclass in it replaced by its :func:`served_model`."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return served_model(hint)
    args = get_args(hint)
    if not args:
        return hint
    served = tuple(_served_type(arg) for arg in args)
    origin = get_origin(hint)
    if origin in (Union, UnionType):
        return functools.reduce(operator.or_, served)
    return origin[served]


def _model_of(
    cls: type,
    name: str,
    *,
    doc: str | None = None,
    required: Collection[str] = (),
    leave_out: Collection[str] = (),
    replace: dict[str, tuple[Any, Any]] | None = None,
    before: dict[str, tuple[Any, Any]] | None = None,
    after: dict[str, tuple[Any, Any]] | None = None,
    extra: Literal["allow", "ignore"] = "allow",
) -> type[BaseModel]:
    """A model of the dataclass ``cls``'s fields (see :func:`served_model`) but ``leave_out``,
    ``replace``'s (type, field) for some, ``before`` and ``after`` theirs around them; the
    fields in ``required`` keep their type and must be there."""
    hints = get_type_hints(cls)
    definitions: dict[str, Any] = dict(before or {})
    for spec in dataclasses.fields(cls):
        if spec.name in leave_out:
            continue
        if replace and spec.name in replace:
            definitions[spec.name] = replace[spec.name]
            continue
        hint = _served_type(hints[spec.name])
        meta = dict(spec.metadata)
        if spec.name in required:
            info = Field(**meta)
        elif get_origin(hint) is list:
            info = Field(default_factory=list, **meta)
        elif spec.default is not dataclasses.MISSING:
            info = Field(default=spec.default, **meta)
            hint = hint | None
        else:
            info = Field(default=None, **meta)
            hint = hint | None
        definitions[spec.name] = (hint, info)
    definitions.update(after or {})
    return create_model(
        name,
        __config__=ConfigDict(extra=extra),
        __doc__=doc or cls.__doc__,
        __module__=__name__,
        **definitions,
    )


@functools.cache
def served_model(cls: type) -> type[BaseModel]:
    """The API's model of a report dataclass of :mod:`service.report_model`, named after it.

    Same fields in the same order, with the same types (nested dataclasses by their models),
    each field's metadata (``description``, ``examples``) as its schema's, and lenient, so a
    report written by an older version is served too: a list field defaults to empty, any
    other to the dataclass's default or else null. Unknown keys are kept.
    """
    return _model_of(cls, cls.__name__)


if TYPE_CHECKING:  # models made at import: mypy sees their base
    TrialOut = BaseModel
    ResultOut = BaseModel
else:
    #: One trial of a job's search: a :class:`~service.report_model.TrialRecord`.
    TrialOut = _model_of(TrialRecord, "TrialOut", required=("number", "state"))
    #: The report of a SUCCEEDED job: the :data:`~service.report_model.RESULT_KEYS` of its
    #: :class:`~service.report_model.Report`, with the Pareto front's points and the artifacts.
    #: ``layers`` are served as ``report.json`` has them (``LayerRow.to_dict``: no ``kept``,
    #: ``reason`` only on a dense layer's row), which a model's fields could not say.
    ResultOut = _model_of(
        Report,
        "ResultOut",
        doc="The report of a SUCCEEDED job.",
        before={"job_id": (str, ...)},
        leave_out=FILE_ONLY_KEYS,
        replace={
            "layers": (
                list[dict[str, Any]],
                Field(default_factory=list, description=inspect.cleandoc(LayerRow.__doc__ or "")),
            )
        },
        after={
            "found_feasible": (
                bool | None,
                Field(default=None, description=Report.found_feasible.__doc__),
            ),
            "pareto_front": (
                list[ParetoPoint],
                Field(default_factory=list, description="its trials, by number"),
            ),
            "artifacts": (list[ArtifactOut], ...),
        },
        extra="ignore",
    )


class TrialList(BaseModel):
    """Every trial of a job and where they were read from."""

    job_id: str
    source: Literal["result", "report", "study", "none"] = Field(
        description="result/report: the finished job's report; study: the live Optuna study"
    )
    trials: list[TrialOut]


class HealthOut(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "ready"]
