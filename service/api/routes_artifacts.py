"""``/v1/jobs/{id}/artifacts``: list a job's files and download one with its digest."""

from __future__ import annotations

import base64
import logging
import mimetypes

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.api.deps import CurrentKey, OwnedJob, State
from service.api.errors import ApiError
from service.api.schemas import JOB_RESPONSES, ArtifactList, ErrorBody, artifact_out
from service.artifacts import ArtifactCorrupted, PathEscapeError
from service.store import InvalidArtifactName

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"])

_GENERIC = ("application/octet-stream", "")


@router.get(
    "/{job_id}/artifacts",
    response_model=ArtifactList,
    summary="A job's artifacts",
    responses=JOB_RESPONSES,
)
def list_artifacts(job: OwnedJob, state: State) -> ArtifactList:
    """Name, size, content type and SHA-256 of every file the job produced."""
    artifacts = state.store.list_artifacts(job.id, job.owner_id)
    return ArtifactList(job_id=job.id, artifacts=[artifact_out(a) for a in artifacts])


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=FileResponse,
    summary="Download an artifact",
    responses={
        200: {
            "content": {  # the artifact's own type: model.zip, report.json, pareto.png, ...
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "*/*": {"schema": {"type": "string", "format": "binary"}},
            },
            "description": "the file; `X-Content-SHA256` (hex) and `Digest: sha-256=<base64>` "
            "carry its digest",
        },
        **JOB_RESPONSES,
        500: {
            "model": ErrorBody,
            "description": "artifact_corrupted: the stored file no longer has the digest "
            "recorded when it was written",
        },
    },
)
def download_artifact(job_id: str, name: str, key: CurrentKey, state: State) -> FileResponse:
    """The file ``name`` of the job (``model.zip``, ``report.json``, ``pareto.png``, ...).

    The file's SHA-256 is checked against the digest recorded when it was written before it
    is served; a mismatch is a 500 ``artifact_corrupted`` (and an error in the log).
    """
    artifact = state.store.get_artifact(job_id, key.id, name)
    try:
        path = state.artifacts.open_verified(artifact.path, artifact.sha256)
    except (PathEscapeError, InvalidArtifactName):
        raise ApiError(404, "artifact_missing", f"artifact {name!r} is not available") from None
    except FileNotFoundError:
        raise ApiError(
            404,
            "artifact_missing",
            f"artifact {name!r} of job {job_id} is recorded but its file is gone from the server",
        ) from None
    except ArtifactCorrupted as exc:
        logger.error("job %s: refusing to serve %s: %s", job_id, name, exc)
        raise ApiError(
            500,
            "artifact_corrupted",
            f"artifact {name!r} of job {job_id} is damaged on the server (its SHA-256 does not "
            "match the recorded one); ask the operator to restore it or run the job again",
        ) from None
    content_type = artifact.content_type
    if content_type in _GENERIC:
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    digest = base64.b64encode(bytes.fromhex(artifact.sha256)).decode("ascii")
    return FileResponse(
        path,
        media_type=content_type,
        filename=name,
        headers={
            "X-Content-SHA256": artifact.sha256,
            "Digest": f"sha-256={digest}",
            "Repr-Digest": f"sha-256=:{digest}:",
            "Cache-Control": "private, max-age=0",
        },
    )
