"""``POST /v1/jobs``: receive the multipart form, check every input, queue the job.

Uploads are written straight into the job's upload folder (the job id is drawn before the row
exists) and checked without torch and without unpickling. The job records them relative to the
upload folder (``<job_id>/weights.pt``, ``<job_id>/dataset.npz``). On any refusal, and on an
idempotent replay, the folder is removed again.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.api.errors import ApiError
from service.api.inputs import (
    InputError,
    check_arch,
    check_dataset_file,
    check_server_dataset,
    check_weights_file,
)
from service.api.uploads import ReceivedFile, ReceivedForm, receive_form
from service.artifacts import job_upload_dir, remove_tree
from service.settings import Settings
from service.spec import JobSpec
from service.store import JobRecord, Store, request_hash_of

__all__ = ["FORM_SCHEMA", "submit_job"]

logger = logging.getLogger(__name__)

#: The OpenAPI description of the form (the route reads the body itself, streaming).
FORM_SCHEMA = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["spec", "weights"],
                "properties": {
                    "spec": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "description": "the job spec as JSON (JobSpec: arch, dataset, trials, "
                        "max_accuracy_drop, ...)",
                    },
                    "weights": {
                        "type": "string",
                        "format": "binary",
                        "description": ".safetensors, or a torch.save(state_dict) .pt/.pth/.bin",
                    },
                    "dataset": {
                        "type": "string",
                        "format": "binary",
                        "description": ".npz or .safetensors with x_train, y_train, x_val, y_val; "
                        'only with spec.dataset == "upload"',
                    },
                },
            }
        }
    },
}


def _spec_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"spec.{where}: {error['msg']}" if where else f"spec: {error['msg']}")
    return "; ".join(parts)


def _parse_spec(form: ReceivedForm) -> JobSpec:
    text = form.fields.get("spec")
    if text is None:
        raise ApiError(422, "missing_spec", "the form needs a 'spec' field with the job's JSON")
    try:
        return JobSpec.model_validate_json(text)
    except ValidationError as exc:
        raise ApiError(422, "invalid_spec", _spec_message(exc)) from None


def _relative(path: Path, settings: Settings) -> str:
    """``path`` as the job records it: relative to the upload folder (``<job_id>/weights.pt``),
    so that machines mounting the folder elsewhere still find it."""
    return path.relative_to(settings.resolved_upload_dir.resolve()).as_posix()


def _keep(received: ReceivedFile, folder: Path, stem: str, suffix: str) -> Path:
    target = folder / f"{stem}.{suffix}"
    received.path.replace(target)
    return target


def _check_files(
    spec: JobSpec, form: ReceivedForm, folder: Path
) -> tuple[Path, Path | None, dict[str, str | None]]:
    """Check and rename the uploaded files; return their paths and digests."""
    weights = form.files.get("weights")
    if weights is None:
        raise ApiError(422, "missing_weights", "the form needs a 'weights' file")
    if weights.size == 0:
        raise ApiError(422, "invalid_weights", "the weights file is empty")
    dataset = form.files.get("dataset")
    if spec.needs_dataset_upload and dataset is None:
        raise ApiError(
            422, "missing_dataset", "spec.dataset is 'upload': send the data as a 'dataset' file"
        )
    if not spec.needs_dataset_upload and dataset is not None:
        raise ApiError(
            422,
            "unexpected_dataset",
            f"a 'dataset' file was sent but spec.dataset is {spec.dataset!r}; set it to 'upload' "
            "to use the file",
        )
    kind = check_weights_file(weights.path, weights.filename)
    weights_path = _keep(
        weights, folder, "weights", "safetensors" if kind == "safetensors" else "pt"
    )
    dataset_path = None
    if dataset is not None:
        if dataset.size == 0:
            raise ApiError(422, "invalid_dataset", "the dataset file is empty")
        data_kind = check_dataset_file(dataset.path, dataset.filename)
        dataset_path = _keep(dataset, folder, "dataset", data_kind)
    digests = {"weights": weights.sha256, "dataset": dataset.sha256 if dataset else None}
    return weights_path, dataset_path, digests


async def submit_job(
    request: Request,
    store: Store,
    settings: Settings,
    owner_id: int,
    idempotency_key: str | None,
) -> JobRecord:
    """Receive, check and queue a job; ``created`` is False on an idempotent replay.

    Raises:
        ApiError: 400/413/415/422 for a refused request.
        IdempotencyConflict: the key was used for another request.
    """
    job_id = uuid.uuid4().hex
    folder = job_upload_dir(settings, job_id)
    await run_in_threadpool(folder.mkdir, parents=True, exist_ok=False)
    keep = False
    try:
        form = await receive_form(
            request,
            folder,
            file_fields=("weights", "dataset"),
            text_fields=("spec",),
            max_file_bytes=settings.max_upload_bytes,
        )
        spec = _parse_spec(form)
        try:
            check_arch(spec.arch, settings.allowed_factories)
            await run_in_threadpool(check_server_dataset, spec.dataset, settings.allowed_data_roots)
            weights_path, dataset_path, digests = await run_in_threadpool(
                _check_files, spec, form, folder
            )
        except InputError as exc:
            raise ApiError(422, exc.code, exc.message) from None
        spec_json = spec.model_dump(mode="json")
        request_hash = request_hash_of({"spec": spec_json, **digests})
        try:
            job = await run_in_threadpool(
                lambda: store.create_job(
                    owner_id,
                    spec_json,
                    _relative(weights_path, settings),
                    _relative(dataset_path, settings) if dataset_path is not None else None,
                    trials_total=spec.trials,
                    timeout_s=spec.timeout_s,
                    request_hash=request_hash,
                    idempotency_key=idempotency_key,
                    job_id=job_id,
                )
            )
        except ValueError as exc:
            raise ApiError(422, "validation_error", str(exc)) from None
        keep = job.created
        if not job.created:
            logger.info("idempotent replay of job %s (key %r)", job.id, idempotency_key)
        return job
    finally:
        if not keep:
            await run_in_threadpool(remove_tree, folder, settings.resolved_upload_dir)
