"""Routes of the web page: ``/`` (the page), ``/static/<file>`` and ``/ui/config``.

The page is served with a Content-Security-Policy that allows scripts, styles and requests to
this origin only (no inline script or style attribute in the markup), and forbids framing.
``/ui/config`` gives the page what it needs to validate a submission as the server does: the
JSON schema of :class:`service.spec.JobSpec`, the ``arch``/``dataset`` patterns and the upload
limit. It holds nothing secret and needs no key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.names import ARCH_PATTERN, SERVER_DATA_PATTERN
from service.settings import Settings
from service.spec import BUILTIN_DATASETS, DATASET_UPLOAD, JobSpec

__all__ = ["PAGE_CSP", "STATIC_DIR", "STATIC_FILES", "page_router"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: What the page loads besides ``index.html``, each served at ``/static/<name>``: the style
#: sheet and the script's ES modules (``app.js`` imports the others; no build step).
STATIC_FILES: tuple[str, ...] = (
    "app.js",
    "api.js",
    "dom.js",
    "job.js",
    "jobs.js",
    "plot.js",
    "router.js",
    "session.js",
    "sse.js",
    "submit.js",
    "style.css",
)

PAGE_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)

_COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _static_route(path: Path) -> Callable[[], FileResponse]:
    def serve() -> FileResponse:
        return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_COMMON_HEADERS)

    serve.__doc__ = f"The page's {path.name}."
    return serve


def page() -> FileResponse:
    """The single-page app."""
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type=_MEDIA_TYPES[".html"],
        headers={**_COMMON_HEADERS, "Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY"},
    )


def page_router(settings: Settings) -> APIRouter:
    """The page's routes for an app configured by ``settings`` (the API includes them; this
    package imports nothing of ``service.api``)."""
    router = APIRouter(include_in_schema=False)
    router.add_api_route("/", page, methods=["GET"])
    # One fixed route per file: no part of a request's path is ever used to open a file.
    for name in STATIC_FILES:
        router.add_api_route(f"/static/{name}", _static_route(STATIC_DIR / name), methods=["GET"])

    @router.get("/ui/config")
    def ui_config() -> dict[str, Any]:
        """What the submission form checks before sending: the spec's JSON schema and limits."""
        return {
            "spec_schema": JobSpec.model_json_schema(),
            "arch_pattern": ARCH_PATTERN,
            "server_dataset_pattern": SERVER_DATA_PATTERN,
            "builtin_datasets": list(BUILTIN_DATASETS),
            "dataset_upload": DATASET_UPLOAD,
            "weights_suffixes": [".safetensors", ".pt", ".pth", ".bin"],
            "dataset_suffixes": [".npz", ".safetensors"],
            "max_upload_bytes": settings.max_upload_bytes,
        }

    return router
