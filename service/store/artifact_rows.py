"""A job's artifacts: rows naming the files a job produced under the artifact root."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import delete, insert, select

from service.store._base import (
    JOB_ID_RE,
    LEASED,
    StoreBase,
    artifacts_table,
    jobs_table,
)
from service.store.exceptions import ArtifactNotFound, InvalidArtifactName, JobNotFound
from service.store.records import ArtifactRecord

__all__ = [
    "ARTIFACT_NAME_RE",
    "ArtifactStore",
    "validate_artifact_name",
    "validate_artifact_path",
]

ARTIFACT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

_jobs = jobs_table
_artifacts = artifacts_table


def validate_artifact_name(name: str) -> str:
    """Return ``name`` if it is a safe artifact name, else raise :class:`InvalidArtifactName`.

    A name is 1-128 characters of letters, digits, ``.``, ``_``, ``-``, starting with a letter
    or digit, and never contains ``..``.
    """
    if not isinstance(name, str) or not ARTIFACT_NAME_RE.match(name) or ".." in name:
        raise InvalidArtifactName(
            f"invalid artifact name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return name


def validate_artifact_path(path: str) -> str:
    """Return ``path`` if it is a relative POSIX path inside the artifact root, else raise
    :class:`InvalidArtifactName`."""
    parts = path.split("/") if isinstance(path, str) else []
    if (
        not parts
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or ":" in parts[0]
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise InvalidArtifactName(
            f"invalid artifact path {path!r}: it must be relative to the artifact root, "
            "'/'-separated, without '.', '..' or empty parts"
        )
    return path


class ArtifactStore(StoreBase):
    """Record and read a job's artifacts."""

    def add_artifact(
        self,
        job_id: str,
        name: str,
        path: str,
        sha256: str,
        size: int,
        content_type: str = "application/octet-stream",
        *,
        worker_id: str | None = None,
    ) -> ArtifactRecord:
        """Record (or replace) the job's artifact ``name`` stored at ``path`` (relative to the
        artifact root). With ``worker_id`` the caller must hold the job's lease.

        Raises:
            InvalidArtifactName: a bad name or a path that could leave the artifact root.
            ValueError: ``sha256`` is not 64 lowercase hex digits or ``size`` is negative.
            JobNotFound: no such job.
            LeaseLost: ``worker_id`` was given and does not hold the lease.
        """
        validate_artifact_name(name)
        validate_artifact_path(path)
        if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
        if size < 0:
            raise ValueError(f"artifact size must be >= 0, got {size}")
        with self._write() as conn:
            now = self._clock()
            job = self._job_row(conn, job_id)
            if job is None:
                raise JobNotFound(job_id)
            if worker_id is not None and (
                job["lease_owner"] != worker_id or job["status"] not in [s.value for s in LEASED]
            ):
                raise self._lease_lost(conn, job_id, worker_id, LEASED)
            conn.execute(
                delete(_artifacts).where(_artifacts.c.job_id == job_id, _artifacts.c.name == name)
            )
            values: dict[str, Any] = {
                "job_id": job_id,
                "name": name,
                "path": path,
                "sha256": sha256,
                "size": size,
                "content_type": content_type,
                "created_at": now,
            }
            conn.execute(insert(_artifacts).values(values))
        return ArtifactRecord(**values)

    def list_artifacts(self, job_id: str, owner_id: int | None = None) -> list[ArtifactRecord]:
        """The job's artifacts by name; with ``owner_id`` only if that owner owns the job.

        Raises:
            JobNotFound: ``owner_id`` was given and does not own the job (or there is none).
        """
        if owner_id is not None:
            self.get_job(job_id, owner_id)
        with self._read() as conn:
            rows = (
                conn.execute(
                    select(_artifacts)
                    .where(_artifacts.c.job_id == job_id)
                    .order_by(_artifacts.c.name)
                )
                .mappings()
                .all()
            )
        return [ArtifactRecord.from_row(row) for row in rows]

    def get_artifact(self, job_id: str, owner_id: int, name: str) -> ArtifactRecord:
        """The owner's job's artifact ``name``.

        Raises:
            InvalidArtifactName: a malformed name.
            JobNotFound: no such job, or another owner's.
            ArtifactNotFound: the job has no artifact of that name.
        """
        validate_artifact_name(name)
        if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
            raise JobNotFound(str(job_id))
        with self._read() as conn:
            row = (
                conn.execute(
                    select(_artifacts)
                    .join(_jobs, _jobs.c.id == _artifacts.c.job_id)
                    .where(
                        _jobs.c.id == job_id,
                        _jobs.c.owner_id == owner_id,
                        _artifacts.c.name == name,
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                owned = conn.execute(
                    select(_jobs.c.id).where(_jobs.c.id == job_id, _jobs.c.owner_id == owner_id)
                ).first()
        if row is None:
            if owned is None:
                raise JobNotFound(job_id)
            raise ArtifactNotFound(job_id, name)
        return ArtifactRecord.from_row(row)
