"""Finalising a job: the long fine-tune, the files a user downloads, and the result record.

Files are written to a private staging folder (:meth:`ArtifactStore.staging`) and published
as ``<artifact_root>/jobs/<id>/`` in one rename (:meth:`ArtifactStore.commit`, after an fsync of
every file) only after the lease was renewed once more, so a worker that lost its lease while it
worked cannot overwrite the results of the worker that took the job over, and a reader never
sees half of them.

Artifacts (each registered with its sha256, size and content type):

=====================  ====================================================================
``model.safetensors``  the compressed model in one file (``tensorops.load_compressed``)
``model.zip``          the checkpoint folder (manifest + weights), zipped
``report.json``        the full report: every trial, the plan, the verification
``pareto.png``         accuracy against compression of every trial
``model.torchscript.pt`` / ``model.onnx``   the exports the spec asked for
=====================  ====================================================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.artifacts import ArtifactStore, artifact_store, zip_directory
from service.report_model import RESULT_KEYS
from service.settings import Settings
from service.store import Store
from tensorops import Plan, load_compressed, save_compressed
from worker.pool._budget import count
from worker.pool._context import JobContext
from worker.pool._lease import PhaseInterrupted
from worker.search import finalize
from worker.zoo import get_model

__all__ = ["ARTIFACTS", "EXPORT_FILES", "publish_results", "summarize"]

logger = logging.getLogger(__name__)

#: Artifact name → content type, in the order they are registered.
ARTIFACTS: dict[str, str] = {
    "model.safetensors": "application/octet-stream",
    "model.zip": "application/zip",
    "report.json": "application/json",
    "pareto.png": "image/png",
    "model.torchscript.pt": "application/octet-stream",
    "model.onnx": "application/onnx",
}
EXPORT_FILES: dict[str, str] = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}

#: Report keys copied into the job's result record (the full report stays in report.json):
#: those ``GET /v1/jobs/{id}/result`` serves, defined with the report in ``service.report_model``.
SUMMARY_KEYS: tuple[str, ...] = RESULT_KEYS


def _jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as None and tuples as lists (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The part of a search report that the job's result record holds."""
    return _jsonable({key: report[key] for key in SUMMARY_KEYS if key in report})


def _export(jc: JobContext, model: Any, folder: Path) -> dict[str, str]:
    """Write the exports the spec asks for; return the error of each that failed."""
    from tensorops import export_onnx, export_torchscript

    exporters = {"torchscript": export_torchscript, "onnx": export_onnx}
    errors: dict[str, str] = {}
    example = jc.ctx.example.detach().to("cpu")
    for kind in dict.fromkeys(jc.spec.exports):
        try:
            exporters[kind](model, example, folder / EXPORT_FILES[kind])
        except PhaseInterrupted:
            raise
        except Exception as exc:  # an op the format cannot express, a missing extra
            errors[kind] = f"{type(exc).__name__}: {exc}"
            logger.warning("job %s: %s export failed: %s", jc.job_id, kind, exc)
    return errors


def publish_results(
    settings: Settings,
    store: Store,
    jc: JobContext,
    worker_id: str,
    *,
    before_publish: Callable[[], None],
    artifacts: ArtifactStore | None = None,
) -> dict[str, Any]:
    """Finalise ``jc``'s search, write and register its artifacts; return the result record.

    ``before_publish`` runs just before the files replace ``jobs/<id>/``; it must raise when
    this worker no longer holds the lease. ``artifacts`` defaults to the settings' store.
    """
    files = artifacts if artifacts is not None else artifact_store(settings)
    staging = files.staging(jc.job_id)
    try:
        result = finalize(jc.ctx, jc.study, staging, arch=dict(jc.arch), extra={"job": jc.job_id})
        report = result.report

        def build(arch: Any) -> Any:
            return get_model(
                arch["arch"], allowed_factories=settings.allowed_factories, **arch["kwargs"]
            )

        # Reload what finalize wrote (this verifies it) and write the single-file form.
        model = load_compressed(result.checkpoint, builder=build).eval()
        save_compressed(
            model,
            Plan.from_dict(report["plan"]),
            staging / "model.safetensors",
            meta={
                "arch": dict(jc.arch),
                "accuracy": report["final"]["accuracy"],
                "baseline_accuracy": report["baseline"]["accuracy"],
                "job": jc.job_id,
            },
        )
        zip_directory(result.checkpoint, staging / "model.zip")
        export_errors = _export(jc, model, staging)
        before_publish()
        files.commit(jc.job_id, staging)
    except BaseException:
        files.discard(staging)
        raise
    artifacts_out = []
    for name, content_type in ARTIFACTS.items():
        info = files.info(jc.job_id, name)
        if info is None:
            continue
        record = store.add_artifact(
            jc.job_id,
            name,
            info.path,
            info.sha256,
            info.size,
            content_type,
            worker_id=worker_id,
        )
        artifacts_out.append(record.to_public())
    summary = summarize(report)
    summary["trial_counts"] = count(jc.study).as_dict()
    summary["artifacts"] = artifacts_out
    if export_errors:
        summary["export_errors"] = export_errors
    summary["finalized_by"] = worker_id
    return summary
