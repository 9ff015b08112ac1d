"""The operators' dashboard: static pages the hub serves at ``/``, built on the API.

``static/`` holds ``index.html``, the page's ES modules and CSS, and uPlot
(vendored, see ``static/vendor/uplot/README.md``); no build step. The page
calls only ``/v1/...`` with the token the operator signs in with (kept in the
tab's session storage). :func:`install_dashboard` serves the files (no token:
they hold no data; ``index.html`` only at ``/``, with its security headers) and adds the read routes the pages need
(:mod:`cloud_hub.api.routes.fleet`) and the one-time sign-in codes
(:mod:`cloud_hub.api.routes.session`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_URL", "PAGE_HEADERS", "install_dashboard"]

ASSETS_URL: Final = "/ui"
_STATIC: Final = Path(__file__).parent / "static"
PAGE_HEADERS: Final = {
    "Cache-Control": "no-cache",
    # Only this hub's own files and API: no inline script, nothing from elsewhere.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""Headers of ``/``."""
_FILES: Final = (
    "index.html",
    "app.js",
    "api.js",
    "dom.js",
    "app.css",
    "vendor/uplot/uPlot.iife.min.js",
)


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` (assets under :data:`ASSETS_URL`) and its API routes."""
    from cloud_hub.api.routes import fleet, session  # noqa: PLC0415

    missing = [name for name in _FILES if not (_STATIC / name).is_file()]
    if missing:
        raise RuntimeError(
            f"the dashboard's files {', '.join(missing)} are missing from {_STATIC}; the "
            "edgeloop install is incomplete: reinstall it (they are package data of "
            "cloud_hub.dashboard)"
        )
    setattr(app.state, session.CODEBOOK_KEY, session.CodeBook())
    app.include_router(fleet.router)
    app.include_router(session.router)
    index = _STATIC / "index.html"

    # The page only at /, with its headers: not also as an asset without them.
    @app.get(f"{ASSETS_URL}/index.html", include_in_schema=False)
    def index_as_asset() -> RedirectResponse:
        return RedirectResponse("/", status_code=308)

    app.mount(ASSETS_URL, StaticFiles(directory=_STATIC), name="dashboard")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(index, headers=PAGE_HEADERS)
