"""A synchronous Python client of the rankopt REST API (httpx; no torch).

::

    from service.client import RankoptClient

    with RankoptClient.from_env() as client:          # RANKOPT_URL, RANKOPT_API_KEY
        job = client.submit({"arch": "rankopt:lenet5", "dataset": "digits"}, Path("w.pt"))
        for event in client.events(job["id"]):
            print(event["event"], event["data"]["progress"]["trials_done"])
        client.download(job["id"], "model.zip", Path("out"))

Every failed request raises :class:`ClientError` with the HTTP status and the API's error
``code`` and ``message``; a download whose bytes do not match the server's SHA-256 raises
:class:`DigestMismatch`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = ["DEFAULT_URL", "ClientError", "DigestMismatch", "RankoptClient"]

DEFAULT_URL = "http://127.0.0.1:8000"
_CHUNK = 1 << 20
# ``RankoptClient.list`` shadows the builtin inside the class body.
_Records = list[dict[str, Any]]


class ClientError(Exception):
    """A request the service refused or could not answer.

    ``status`` is the HTTP status (0 when the service could not be reached), ``code`` the
    API's stable error code, ``message`` its explanation.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if status == 0 else f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class DigestMismatch(ClientError):
    """A downloaded file's SHA-256 differs from the one the server announced."""


def _error_from(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and "code" in body:
        return ClientError(response.status_code, str(body["code"]), str(body.get("message", "")))
    text = response.text.strip().splitlines()[0][:300] if response.text.strip() else ""
    return ClientError(
        response.status_code, f"http_{response.status_code}", text or response.reason_phrase
    )


def _parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Messages of a server-sent events stream: ``{"event", "id", "data"}`` (data as JSON)."""
    event: str = "message"
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                text = "\n".join(data)
                try:
                    payload: Any = json.loads(text)
                except json.JSONDecodeError:
                    payload = text
                yield {"event": event, "id": event_id, "data": payload}
            event, event_id, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


class RankoptClient:
    """Client of one rankopt service, authenticated with one API key.

    Args:
        url: base URL of the service, e.g. ``http://127.0.0.1:8000``.
        api_key: the key ``rankopt keys create`` printed.
        timeout: seconds for connecting and for each read (the events stream waits longer).
        client: an ``httpx.Client`` to send requests through (tests pass one bound to the app);
            its base URL is replaced by ``url`` unless ``url`` is empty.
        transport: an httpx transport for the client this object creates.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("an API key is required (RANKOPT_API_KEY or api_key=)")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._owns_client = client is None
        self._http = client or httpx.Client(base_url=self.url, timeout=timeout, transport=transport)
        if client is not None and self.url:
            self._http.base_url = httpx.URL(self.url)

    @classmethod
    def from_env(cls, **kwargs: Any) -> RankoptClient:
        """A client for ``RANKOPT_URL`` (default ``http://127.0.0.1:8000``) with the key in
        ``RANKOPT_API_KEY``.

        Raises:
            ValueError: ``RANKOPT_API_KEY`` is not set.
        """
        key = os.environ.get("RANKOPT_API_KEY", "").strip()
        if not key:
            raise ValueError(
                "RANKOPT_API_KEY is not set; create a key with 'rankopt keys create --name NAME' "
                "and export it"
            )
        return cls(os.environ.get("RANKOPT_URL", "").strip() or DEFAULT_URL, key, **kwargs)

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        """Close the connection pool (only a client this object created)."""
        if self._owns_client:
            self._http.close()

    def __enter__(self) -> RankoptClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(0, "connection_error", f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # ------------------------------------------------------------------ jobs
    def submit(
        self,
        spec: Mapping[str, Any],
        weights: Path,
        dataset: Path | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a job: ``spec`` (a JobSpec as a dict), the weights file and, when
        ``spec["dataset"] == "upload"``, the dataset file. Returns the job.

        Files are streamed, not read into memory. With ``idempotency_key`` a retry of the same
        submission returns the job the first one created.
        """
        weights, dataset = Path(weights), Path(dataset) if dataset is not None else None
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with ExitStack() as stack:
            files: dict[str, Any] = {
                "weights": (weights.name, stack.enter_context(weights.open("rb"))),
            }
            if dataset is not None:
                files["dataset"] = (dataset.name, stack.enter_context(dataset.open("rb")))
            data = {"spec": json.dumps(dict(spec))}
            result: dict[str, Any] = self._json(
                "POST", "/v1/jobs", data=data, files=files, headers=headers
            )
        return result

    def list(
        self, status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of the caller's jobs, newest first: ``{"jobs": [...], "next_cursor"}``."""
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = status
        if cursor is not None:
            params["cursor"] = cursor
        page: dict[str, Any] = self._json("GET", "/v1/jobs", params=params)
        return page

    def iter_jobs(
        self, status: str | None = None, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every job of the caller, newest first, following the cursor."""
        cursor = None
        while True:
            page = self.list(status=status, limit=page_size, cursor=cursor)
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def get(self, job_id: str) -> dict[str, Any]:
        """The job: status, phase, progress, error."""
        job: dict[str, Any] = self._json("GET", f"/v1/jobs/{job_id}")
        return job

    def trials(self, job_id: str) -> _Records:
        """Every trial so far: plan, accuracy, compression, state, duration."""
        body = self._json("GET", f"/v1/jobs/{job_id}/trials")
        trials: _Records = body["trials"]
        return trials

    def result(self, job_id: str) -> dict[str, Any]:
        """The report of a SUCCEEDED job (409 ``not_finished`` before)."""
        result: dict[str, Any] = self._json("GET", f"/v1/jobs/{job_id}/result")
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask to cancel the job (idempotent); returns the job."""
        job: dict[str, Any] = self._json("POST", f"/v1/jobs/{job_id}/cancel")
        return job

    def delete(self, job_id: str) -> None:
        """Delete a finished job and its files."""
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def artifacts(self, job_id: str) -> _Records:
        """The job's artifacts: name, size, content type, sha256."""
        body = self._json("GET", f"/v1/jobs/{job_id}/artifacts")
        artifacts: _Records = body["artifacts"]
        return artifacts

    def events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Follow the job's server-sent events until the stream ends.

        Yields ``{"event": "progress" | "end" | "error", "id": ..., "data": <job JSON>}``; the
        last one of a finished job is ``end``.
        """
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, 60.0))
        try:
            with self._http.stream(
                "GET", f"/v1/jobs/{job_id}/events", headers=self._headers, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                yield from _parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise ClientError(0, "connection_error", f"events of {job_id}: {exc}") from exc

    def download(self, job_id: str, name: str, dest: Path) -> Path:
        """Download the artifact ``name`` to ``dest`` and check its SHA-256 against the
        server's ``X-Content-SHA256`` header; returns the file's path.

        ``dest`` is an existing folder (the file becomes ``dest/name``) or the file's path (its
        folder is created). The bytes go to a temporary file beside it, renamed once verified.

        Raises:
            DigestMismatch: the bytes received do not have the announced digest (nothing is
                left at ``dest``).
            ClientError: the server refused, or announced no digest.
        """
        dest = Path(dest)
        target = dest / name if dest.is_dir() else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._http.stream(
                "GET", f"/v1/jobs/{job_id}/artifacts/{name}", headers=self._headers
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                expected = _announced_sha256(response)
                digest = hashlib.sha256()
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
                try:
                    with os.fdopen(fd, "wb") as handle:
                        for chunk in response.iter_bytes(_CHUNK):
                            digest.update(chunk)
                            handle.write(chunk)
                    if digest.hexdigest() != expected:
                        raise DigestMismatch(
                            response.status_code,
                            "digest_mismatch",
                            f"{name} of job {job_id}: received SHA-256 {digest.hexdigest()}, "
                            f"the server announced {expected}; the download was discarded",
                        )
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
        except httpx.TransportError as exc:
            raise ClientError(0, "connection_error", f"download of {name}: {exc}") from exc
        return target


def _announced_sha256(response: httpx.Response) -> str:
    hex_digest = response.headers.get("x-content-sha256", "").strip().lower()
    if hex_digest:
        return hex_digest
    for part in response.headers.get("digest", "").split(","):
        algorithm, _, value = part.strip().partition("=")
        if algorithm.lower() == "sha-256" and value:
            return base64.b64decode(value).hex()
    raise ClientError(
        response.status_code, "missing_digest", "the server sent no SHA-256 for the artifact"
    )
