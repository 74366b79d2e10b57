"""Streaming ``multipart/form-data`` reception straight into a job's upload folder.

Starlette's own form parsing spools every file to a temporary file before the route runs and
has no size limit for files; here each file part is written, chunk by chunk, to its final
folder while its SHA-256 is computed, and the request is refused (413) the moment a file
passes the limit, the partial file being removed by the caller with the folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from service.api.errors import ApiError

__all__ = ["ReceivedFile", "ReceivedForm", "receive_form"]

_MAX_PARTS = 16
_MAX_HEADER_BYTES = 16 * 1024
_FORM_OVERHEAD = 1024 * 1024  # boundaries, part headers and text fields, on top of the files


@dataclass
class ReceivedFile:
    """A file part written to ``path``."""

    field: str
    filename: str
    path: Path
    size: int = 0
    sha256: str = ""


@dataclass
class ReceivedForm:
    """The text fields and files of one multipart request."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, ReceivedFile] = field(default_factory=dict)


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    text: bytearray = field(default_factory=bytearray)
    file: ReceivedFile | None = None
    handle: IO[bytes] | None = None
    digest: Any = None


class _Receiver:
    """Collects parser events (synchronous callbacks) and applies them in a worker thread."""

    def __init__(
        self,
        folder: Path,
        *,
        file_fields: tuple[str, ...],
        text_fields: tuple[str, ...],
        max_file_bytes: int,
        max_text_bytes: int,
    ) -> None:
        self.folder = folder
        self.file_fields = file_fields
        self.text_fields = text_fields
        self.max_file_bytes = max_file_bytes
        self.max_text_bytes = max_text_bytes
        self.form = ReceivedForm()
        self.events: list[tuple[str, Any]] = []
        self.parts = 0
        self.ended = False
        self._header_name = b""
        self._header_value = b""
        self._part: _Part | None = None

    # ---- parser callbacks: record only
    def on_part_begin(self) -> None:
        self.events.append(("begin", None))

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > _MAX_HEADER_BYTES:
            raise ApiError(400, "invalid_multipart", "a multipart part header is too long")

    def on_header_end(self) -> None:
        self.events.append(("header", (self._header_name.lower(), self._header_value)))
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        self.events.append(("headers_done", None))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(("data", bytes(data[start:end])))

    def on_part_end(self) -> None:
        self.events.append(("end", None))

    def on_end(self) -> None:
        self.ended = True

    def callbacks(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in (
                "on_part_begin",
                "on_header_field",
                "on_header_value",
                "on_header_end",
                "on_headers_finished",
                "on_part_data",
                "on_part_end",
                "on_end",
            )
        }

    # ---- applied in a thread: file I/O happens here
    def apply(self) -> None:
        events, self.events = self.events, []
        for kind, value in events:
            if kind == "begin":
                self.parts += 1
                if self.parts > _MAX_PARTS:
                    raise ApiError(400, "invalid_multipart", f"more than {_MAX_PARTS} form parts")
                self._part = _Part()
            elif kind == "header":
                assert self._part is not None
                self._part.headers[value[0]] = value[1]
            elif kind == "headers_done":
                self._start_part()
            elif kind == "data":
                self._write(value)
            elif kind == "end":
                self._finish_part()

    def _start_part(self) -> None:
        part = self._part
        assert part is not None
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise ApiError(400, "invalid_multipart", "a form part has no name")
        part.name = options[b"name"].decode("utf-8", "replace")
        raw_filename = options.get(b"filename")
        part.filename = raw_filename.decode("utf-8", "replace") if raw_filename else None
        if part.name in self.form.fields or part.name in self.form.files:
            raise ApiError(422, "duplicate_field", f"the form field {part.name!r} was sent twice")
        if part.name in self.file_fields:
            path = self.folder / f"{part.name}.upload"
            part.file = ReceivedFile(part.name, part.filename or "", path)
            part.handle = path.open("xb")
            part.digest = hashlib.sha256()
        elif part.name not in self.text_fields:
            expected = ", ".join(repr(n) for n in (*self.text_fields, *self.file_fields))
            raise ApiError(
                422,
                "unexpected_field",
                f"unexpected form field {part.name!r}; the form takes {expected}",
            )

    def _write(self, data: bytes) -> None:
        part = self._part
        assert part is not None
        if part.file is None:
            part.text.extend(data)
            if len(part.text) > self.max_text_bytes:
                raise ApiError(
                    413,
                    "upload_too_large",
                    f"the form field {part.name!r} exceeds {self.max_text_bytes} bytes",
                )
            return
        assert part.handle is not None
        part.file.size += len(data)
        if part.file.size > self.max_file_bytes:
            raise ApiError(
                413,
                "upload_too_large",
                f"the {part.name!r} file exceeds the server's limit of {self.max_file_bytes} "
                "bytes (RANKOPT_MAX_UPLOAD_BYTES)",
            )
        part.handle.write(data)
        part.digest.update(data)

    def _finish_part(self) -> None:
        part = self._part
        assert part is not None
        if part.file is not None:
            assert part.handle is not None
            part.handle.close()
            part.handle = None
            part.file.sha256 = part.digest.hexdigest()
            self.form.files[part.name] = part.file
        else:
            try:
                self.form.fields[part.name] = part.text.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(
                    422, "invalid_multipart", f"the form field {part.name!r} is not UTF-8"
                ) from None
        self._part = None

    def close(self) -> None:
        """Close a file left open by an error (the caller removes the folder)."""
        if self._part is not None and self._part.handle is not None:
            self._part.handle.close()
            self._part.handle = None


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the job as multipart/form-data with a 'spec' field and a 'weights' file",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "invalid_multipart", "the multipart Content-Type has no boundary")
    return boundary


async def receive_form(
    request: Request,
    folder: Path,
    *,
    file_fields: Iterable[str],
    text_fields: Iterable[str],
    max_file_bytes: int,
    max_text_bytes: int = 256 * 1024,
) -> ReceivedForm:
    """Read the request's multipart body; write ``file_fields`` parts to ``folder``.

    Each file goes to ``folder/<field>.upload`` (the folder must exist); the caller renames
    or removes it, and removes the folder when this raises.

    Raises:
        ApiError: 415 (not multipart), 400 (malformed), 413 (a file or field too large),
            422 (an unknown or repeated field).
    """
    boundary = _boundary(request)
    files = tuple(file_fields)
    texts = tuple(text_fields)
    declared = request.headers.get("content-length")
    limit = len(files) * max_file_bytes + len(texts) * max_text_bytes + _FORM_OVERHEAD
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413,
            "upload_too_large",
            f"the request is {declared} bytes; files may be at most {max_file_bytes} bytes each "
            "(RANKOPT_MAX_UPLOAD_BYTES)",
        )
    receiver = _Receiver(
        folder,
        file_fields=files,
        text_fields=texts,
        max_file_bytes=max_file_bytes,
        max_text_bytes=max_text_bytes,
    )
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            parser.write(chunk)
            if receiver.events:
                await run_in_threadpool(receiver.apply)
        parser.finalize()
        if receiver.events:
            await run_in_threadpool(receiver.apply)
    except MultipartParseError as exc:
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
    except ClientDisconnect:
        raise ApiError(400, "invalid_multipart", "the client disconnected mid-upload") from None
    finally:
        receiver.close()
    if not receiver.ended:
        raise ApiError(
            400, "invalid_multipart", "the multipart body ended before its closing boundary"
        )
    return receiver.form
