"""Where jobs keep files: uploads and results under the configured roots, never outside them.

Layout (``settings.artifact_root``)::

    <artifact_root>/jobs/<job_id>/          results written by the finalising worker
    <upload_dir>/<job_id>/weights.<ext>     uploaded weights (.safetensors, .pt, .pth)
    <upload_dir>/<job_id>/dataset.<ext>     uploaded dataset (.npz, .safetensors)

Artifact names are single path components (see :func:`service.store.validate_artifact_name`);
:func:`confined` refuses any path that resolves outside its root, symlinks included.

Results go through an :class:`ArtifactStore`; :class:`LocalArtifactStore` (the default, see
:func:`artifact_store`) keeps them in a folder. Every file appears under its final name in one
step (written to a temporary file in the same folder, flushed to disk with ``fsync``, then
renamed; a job's results are published as a whole by renaming a staging folder), so a reader
never sees half a file, and every read that serves a file checks its SHA-256 against the
digest recorded when it was written (:meth:`ArtifactStore.open_verified`).

Several machines share results by mounting the same shared filesystem (NFS, CephFS, a cloud
file share, ...) at the same path on every machine and pointing ``RANKOPT_ARTIFACT_ROOT`` at it:
the paths recorded in the database are relative to that root, and ``rename`` within one
filesystem is atomic on NFS and on local disks alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from service.settings import Settings
from service.store import validate_artifact_name, validate_artifact_path

__all__ = [
    "ArtifactCorrupted",
    "ArtifactInfo",
    "ArtifactStore",
    "LocalArtifactStore",
    "PathEscapeError",
    "artifact_store",
    "confined",
    "job_result_dir",
    "job_upload_dir",
    "remove_tree",
    "sha256_file",
    "zip_directory",
]

_CHUNK = 1 << 20

logger = logging.getLogger(__name__)


class PathEscapeError(ValueError):
    """A path that would leave the folder it must stay in."""


def confined(root: Path, *parts: str) -> Path:
    """``root / parts`` resolved, guaranteed to lie inside ``root`` (else PathEscapeError)."""
    base = root.resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise PathEscapeError(f"{'/'.join(parts)!r} is outside {base}")
    return target


def job_result_dir(settings: Settings, job_id: str) -> Path:
    """The folder of a job's results (not created)."""
    validate_artifact_name(job_id)
    return confined(settings.artifact_root, "jobs", job_id)


def job_upload_dir(settings: Settings, job_id: str) -> Path:
    """The folder of a job's uploaded inputs (not created)."""
    validate_artifact_name(job_id)
    return confined(settings.resolved_upload_dir, job_id)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def zip_directory(source: Path, target: Path) -> Path:
    """Write ``source``'s regular files (recursively, no symlinks) into the zip ``target``.

    Entries are relative to ``source`` and sorted; the zip is written to a temporary file in
    the same folder and renamed, so a reader never sees half of it.
    """
    files = sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink())
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, path.relative_to(source).as_posix())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def remove_tree(path: Path, root: Path) -> None:
    """Delete ``path`` (a file or folder) if it exists and lies inside ``root``."""
    target = confined(root, str(path.resolve().relative_to(root.resolve())))
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target, ignore_errors=True)
    else:
        target.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ store


@dataclass(frozen=True)
class ArtifactInfo:
    """A stored file: ``path`` relative to the artifact root (``/``-separated, what the
    database records), its hex SHA-256 and its size in bytes."""

    path: str
    sha256: str
    size: int


class ArtifactCorrupted(Exception):
    """A stored file whose SHA-256 is not the one recorded when it was written."""

    code = "artifact_corrupted"

    def __init__(self, path: str, expected: str, actual: str) -> None:
        super().__init__(
            f"artifact {path!r} is corrupted: its SHA-256 is {actual}, expected {expected}"
        )
        self.path = path
        self.expected = expected
        self.actual = actual


class ArtifactStore(ABC):
    """Where job results live. Paths handed in and out are relative to the store's root
    (``jobs/<job_id>/<name>``); every method refuses a path that would leave the root.

    Writes are atomic (a reader sees the old file, or the new one whole); reads through
    :meth:`open_verified` check the file's SHA-256.
    """

    @abstractmethod
    def put_file(self, job_id: str, name: str, source: Path) -> ArtifactInfo:
        """Copy ``source`` to ``jobs/<job_id>/<name>`` atomically."""

    @abstractmethod
    def put_bytes(self, job_id: str, name: str, data: bytes) -> ArtifactInfo:
        """Write ``data`` to ``jobs/<job_id>/<name>`` atomically."""

    @abstractmethod
    def path_of(self, relative_path: str) -> Path:
        """The local path of a stored file (it may not exist)."""

    @abstractmethod
    def open_verified(self, relative_path: str, expected_sha256: str) -> Path:
        """The local path of a stored file after checking its SHA-256.

        Raises:
            FileNotFoundError: no such file.
            ArtifactCorrupted: its digest is not ``expected_sha256``.
            PathEscapeError, InvalidArtifactName: the path leaves the root or is malformed.
        """

    @abstractmethod
    def info(self, job_id: str, name: str) -> ArtifactInfo | None:
        """Path, digest and size of ``jobs/<job_id>/<name>``; None when it does not exist."""

    @abstractmethod
    def staging(self, job_id: str) -> Path:
        """A new, empty, private folder to write a job's results into before :meth:`commit`;
        the staging folders an earlier attempt left for the job are removed."""

    @abstractmethod
    def commit(self, job_id: str, staging: Path) -> None:
        """Publish ``staging`` (from :meth:`staging`) as the job's results, replacing any
        earlier ones: its files are flushed to disk, then the folder is renamed."""

    @abstractmethod
    def discard(self, staging: Path) -> None:
        """Remove a staging folder that will not be committed (no error if it is gone)."""

    @abstractmethod
    def delete_job(self, job_id: str) -> None:
        """Remove every result of the job (no error if there are none)."""


def _fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (best effort: some filesystems
    cannot open a directory for fsync)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


class LocalArtifactStore(ArtifactStore):
    """An :class:`ArtifactStore` in the folder ``root`` (a local disk, or a shared filesystem
    mounted at the same path on every machine)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    # -------------------------------------------------------------- paths
    def _jobs(self) -> Path:
        return confined(self.root, "jobs")

    def job_dir(self, job_id: str) -> Path:
        """``<root>/jobs/<job_id>`` (not created)."""
        validate_artifact_name(job_id)
        return confined(self.root, "jobs", job_id)

    def relative(self, path: Path) -> str:
        """``path`` (inside the root) relative to the root, ``/``-separated."""
        return path.resolve().relative_to(self.root.resolve()).as_posix()

    def path_of(self, relative_path: str) -> Path:
        validate_artifact_path(relative_path)
        return confined(self.root, *relative_path.split("/"))

    # -------------------------------------------------------------- writes
    def _write_atomic(self, target: Path, chunks: Iterable[bytes]) -> ArtifactInfo:
        """Write ``chunks`` to a temporary file next to ``target``, fsync it, rename it."""
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return ArtifactInfo(self.relative(target), digest.hexdigest(), size)

    def put_file(self, job_id: str, name: str, source: Path) -> ArtifactInfo:
        target = confined(self.job_dir(job_id), validate_artifact_name(name))

        def chunks() -> Iterator[bytes]:
            with Path(source).open("rb") as handle:
                yield from iter(lambda: handle.read(_CHUNK), b"")

        return self._write_atomic(target, chunks())

    def put_bytes(self, job_id: str, name: str, data: bytes) -> ArtifactInfo:
        target = confined(self.job_dir(job_id), validate_artifact_name(name))
        view = memoryview(data)
        return self._write_atomic(
            target, (bytes(view[i : i + _CHUNK]) for i in range(0, len(view), _CHUNK))
        )

    # -------------------------------------------------------------- reads
    def open_verified(self, relative_path: str, expected_sha256: str) -> Path:
        path = self.path_of(relative_path)
        if not path.is_file():
            raise FileNotFoundError(f"artifact {relative_path!r} is not in {self.root}")
        actual = sha256_file(path)
        if actual != expected_sha256.lower():
            raise ArtifactCorrupted(relative_path, expected_sha256, actual)
        return path

    def info(self, job_id: str, name: str) -> ArtifactInfo | None:
        path = confined(self.job_dir(job_id), validate_artifact_name(name))
        if not path.is_file():
            return None
        return ArtifactInfo(self.relative(path), sha256_file(path), path.stat().st_size)

    # -------------------------------------------------------------- job folders
    def staging(self, job_id: str) -> Path:
        validate_artifact_name(job_id)
        jobs = self._jobs()
        jobs.mkdir(parents=True, exist_ok=True)
        for leftover in jobs.glob(f".staging-{job_id}-*"):  # of a worker that lost the job
            remove_tree(leftover, self.root)
        folder = confined(jobs, f".staging-{job_id}-{uuid.uuid4().hex[:8]}")
        folder.mkdir()
        return folder

    def commit(self, job_id: str, staging: Path) -> None:
        final = self.job_dir(job_id)
        staging = confined(self._jobs(), staging.name)
        for path in sorted(staging.rglob("*")):
            if path.is_file() and not path.is_symlink():
                _fsync_file(path)
            elif path.is_dir():
                _fsync_dir(path)
        _fsync_dir(staging)
        if final.exists():
            remove_tree(final, self.root)
        os.replace(staging, final)
        _fsync_dir(final.parent)

    def discard(self, staging: Path) -> None:
        remove_tree(confined(self._jobs(), staging.name), self.root)

    def delete_job(self, job_id: str) -> None:
        remove_tree(self.job_dir(job_id), self.root)
        for leftover in self._jobs().glob(f".staging-{job_id}-*"):
            remove_tree(leftover, self.root)


def artifact_store(settings: Settings) -> ArtifactStore:
    """The artifact store of ``settings``: a :class:`LocalArtifactStore` on
    ``settings.artifact_root``."""
    return LocalArtifactStore(settings.artifact_root)
