"""``/docs`` works without internet: Swagger UI comes from the hub, as package data."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

import cloud_hub.api
from tests.cloud_hub.api.conftest import Hub

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[3]
ASSETS = Path(cloud_hub.api.__file__).parent / "static" / "swagger-ui"
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}


def _referenced_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(
        r"""\burl\s*:\s*["']([^"']+)["']""", html
    )


def test_docs_page_references_only_urls_the_hub_serves(hub: Hub) -> None:
    page = hub.anon.get("/docs")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    html = page.body.decode()
    urls = _referenced_urls(html)
    assert len(urls) >= 4, urls  # the CSS, the favicon, the JavaScript and the OpenAPI spec
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{url} is not on the hub"
    assert "http://" not in html and "https://" not in html, html
    assert '"validatorUrl": null' in html, "the validator badge would fetch from the internet"
    for url in urls:
        reply = hub.anon.get(url)
        assert reply.status == 200, (url, reply.status)
        suffix = Path(url).suffix
        if suffix in CONTENT_TYPES:
            kind = reply.headers["content-type"].split(";")[0].strip()
            assert kind in CONTENT_TYPES[suffix], (url, kind)
            assert reply.body == (ASSETS / Path(url).name).read_bytes(), url


def test_redoc_is_off_rather_than_blank_without_internet(hub: Hub) -> None:
    assert hub.anon.get("/redoc").status == 404


def test_the_assets_are_package_data_of_cloud_hub_api() -> None:
    """A wheel (a non-editable install) carries every vendored file."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["cloud_hub.api"]
    package_dir = ASSETS.parent.parent
    files = [p.relative_to(package_dir).as_posix() for p in ASSETS.iterdir()]
    assert {"static/swagger-ui/swagger-ui-bundle.js", "static/swagger-ui/swagger-ui.css"} <= set(
        files
    )
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
