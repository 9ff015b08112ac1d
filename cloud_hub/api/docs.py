"""``/docs``: Swagger UI served from the package, never from a CDN.

FastAPI's default ``/docs`` page loads Swagger UI's JavaScript and CSS from a
CDN, so it is blank on a hub without internet access. This follows FastAPI's
"Custom Docs UI Static Assets (Self-Hosting)": the automatic docs are turned
off (``docs_url=None, redoc_url=None`` in :func:`cloud_hub.api.create_app`),
the vendored files in ``static/swagger-ui/`` (see its README for version and
license) are mounted at :data:`ASSETS_URL`, and ``/docs`` is FastAPI's own
Swagger UI page pointed at them. Swagger UI's online validator badge is off
too: it would fetch from validator.swagger.io. ``/redoc`` is not served.

Like ``/openapi.json``, the page and its assets need no token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_URL", "DOCS_URL", "install_docs"]

DOCS_URL: Final = "/docs"
ASSETS_URL: Final = "/static/swagger-ui"
_ASSETS: Final = Path(__file__).parent / "static" / "swagger-ui"
_FILES: Final = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` with its assets from the package."""
    missing = [name for name in _FILES if not (_ASSETS / name).is_file()]
    if missing:
        raise RuntimeError(
            f"the API docs' assets {', '.join(missing)} are missing from {_ASSETS}; the edgeloop "
            "install is incomplete: reinstall it (they are package data of cloud_hub.api)"
        )
    app.mount(ASSETS_URL, StaticFiles(directory=_ASSETS), name="swagger-ui")
    openapi_url = app.openapi_url or "/openapi.json"
    title = f"{app.title} - Swagger UI"

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
