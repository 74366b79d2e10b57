"""A job's inputs as a worker reads them: spec → search config, model, weights, data.

Everything the user supplied is checked here, and a problem with it is a :class:`BadInput`
whose message says what to fix and whose ``code`` is the cause's (see
:mod:`worker.pool._refusal`). Uploaded files are read only from the upload folder, weights
only as safetensors or ``torch.load(weights_only=True)``, server-side data only under the
allowed data roots, and model factories only from the allow-list.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from torch import nn

from service.artifacts import PathEscapeError, confined
from service.settings import Settings
from service.spec import JobSpec
from service.store import JobRecord
from worker.data import DataLimits, DatasetError, DataSplits, open_dataset
from worker.errors import InvalidOptions
from worker.pool._refusal import BadInput, refused
from worker.search import SearchConfig, search_config
from worker.split_record import check_split, read_record
from worker.training import check_model_input
from worker.weights import WeightsError, load_weights, read_state_dict
from worker.zoo import ZooError, documented_input, get_model

__all__ = [
    "BadInput",
    "JobInputs",
    "data_limits",
    "load_inputs",
    "parse_spec",
    "search_config_from_spec",
    "upload_path",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobInputs:
    """What a job's spec and uploads turn into."""

    model: nn.Module
    data: DataSplits  # streamed: an image folder is read batch by batch, never decoded whole
    arch: dict[str, Any]  # {"arch": name, "kwargs": {...}}, as checkpoints record it


def parse_spec(raw: Any) -> JobSpec:
    """Validate the stored spec of a job."""
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}"
            for err in exc.errors()
        )
        raise BadInput(f"the job spec is invalid: {problems}", code="invalid_spec") from None


def search_config_from_spec(
    spec: JobSpec, device: str, *, trials: int | None = None
) -> SearchConfig:
    """The :class:`SearchConfig` of a job spec, run on ``device`` (see
    :func:`worker.search.search_config`); ``trials`` overrides the spec's count (the job
    record's ``trials_total`` is the budget).

    Raises:
        BadInput: a value the search refuses (e.g. a method name that is not registered).
    """
    try:
        return search_config(spec, device=device, trials=trials)
    except InvalidOptions as exc:
        raise refused(exc, "the job spec is invalid") from None


def upload_path(settings: Settings, stored: str, what: str) -> Path:
    """The uploaded file ``stored`` (as the job records it: relative to the upload folder, or
    absolute inside it), confined to the upload folder.

    Raises:
        BadInput: the path leaves the upload folder or the file is missing.
    """
    root = settings.resolved_upload_dir.resolve()
    path = Path(stored)
    try:
        relative = path.resolve().relative_to(root) if path.is_absolute() else path
        target = confined(root, *relative.parts)
    except (ValueError, PathEscapeError):
        raise BadInput(
            f"the uploaded {what} file is not inside the upload folder; upload it again with "
            "the job"
        ) from None
    if not target.is_file():
        raise BadInput(f"the uploaded {what} file is missing; submit the job again with it")
    return target


def data_limits(settings: Settings) -> DataLimits:
    """The data size limits of ``settings`` (``max_dataset_bytes`` caps file and arrays)."""
    default = DataLimits()
    return DataLimits(
        max_file_bytes=min(default.max_file_bytes, settings.max_dataset_bytes),
        max_decoded_bytes=settings.max_dataset_bytes,
    )


def load_inputs(settings: Settings, job: JobRecord, spec: JobSpec) -> JobInputs:
    """Open the job's data (streamed, resized to the spec's ``image_size`` with its
    ``preprocess``), build its model and load its weights.

    Raises:
        BadInput: unreadable or unsafe weights, weights that do not fit ``arch``, unknown or
            disallowed ``arch``, unusable data or data the model does not take (code
            ``input_shape_mismatch``), or files outside their folders.
    """
    if spec.needs_dataset_upload:
        if not job.dataset_path:
            raise BadInput("dataset is 'upload' but no dataset file was sent with the job")
        source = str(upload_path(settings, job.dataset_path, "dataset"))
    else:
        source = spec.dataset
    try:
        data = open_dataset(
            source,
            split_seed=spec.split_seed,  # the data's seed, never the search's ``seed``
            allowed_roots=settings.allowed_data_roots,
            limits=data_limits(settings),
            image_size=spec.image_size,
            preprocess=spec.preprocess,
        )
    except DatasetError as exc:
        raise refused(exc, "dataset") from None
    kwargs: dict[str, Any] = {"num_classes": spec.num_classes or data.num_classes}
    if spec.arch.startswith("rankopt:"):
        kwargs["in_channels"] = data.input_shape[0]
    try:
        model = get_model(spec.arch, allowed_factories=settings.allowed_factories, **kwargs)
    except ZooError as exc:
        raise refused(exc, "arch") from None
    weights = upload_path(settings, job.weights_path, "weights")
    # Weights from ``rankopt train`` record their split: a different one is logged (the CLI's
    # --strict-split refuses it; a job has no such switch yet).
    check_split(
        read_record(weights),
        spec.dataset,
        spec.split_seed,
        image_size=spec.image_size,
        preprocess=spec.preprocess,
    )
    try:
        load_weights(model, read_state_dict(weights))
    except WeightsError as exc:
        # The path is the server's; the user knows the file as "the weights".
        detail = str(exc).replace(str(weights), "the weights file")
        raise BadInput(f"weights ({spec.arch}): {detail}", code=exc.code) from None
    try:
        check_model_input(model, data, expected=documented_input(spec.arch))
    except DatasetError as exc:
        raise refused(exc, "dataset") from None
    return JobInputs(model=model.eval(), data=data, arch={"arch": spec.arch, "kwargs": kwargs})
