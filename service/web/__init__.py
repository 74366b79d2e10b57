"""The web page of the service: one static single-page app served at ``/``.

The page (``static/index.html``, ``app.js``, ``style.css``) talks to the ``/v1`` API with the
API key the user types in, kept in the browser's session storage and sent as
``Authorization: Bearer``. No build step and nothing from other origins. ``service.api`` includes
:func:`page_router`; this package imports nothing of ``service.api``.
"""

from __future__ import annotations

from service.web.routes import PAGE_CSP, STATIC_DIR, STATIC_FILES, page_router

__all__ = ["PAGE_CSP", "STATIC_DIR", "STATIC_FILES", "page_router"]
