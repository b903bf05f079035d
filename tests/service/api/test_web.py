"""The web page's routes (service/api/routes/web.py) in the real app, over the fake encoder:
/ and /web/* serve the files of service/web with their types, anything else under /web/ is
a 404 in the error shape, and with API keys the page loads without a key while the API
still needs one. The page itself runs in a browser in tests/web/test_browser.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from contrastkit.service.api.routes import web
from contrastkit.service.settings import Settings

Make = Callable[..., TestClient]
WEB_DIR = Path(web.__file__).resolve().parents[2] / "web"
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
}


def _not_found(r: Response) -> None:
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "not_found" and error["message"]


def test_root_serves_the_page(fake_app_factory: Make) -> None:
    r = fake_app_factory().get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert r.content == (WEB_DIR / "index.html").read_bytes()
    assert '<script type="module" src="web/app.js">' in r.text  # relative: proxy prefixes
    assert 'href="web/style.css"' in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_assets_have_their_content_types(fake_app_factory: Make, name: str) -> None:
    r = fake_app_factory().get(f"/web/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"] == ASSETS[name]
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.content == (WEB_DIR / name).read_bytes()


def test_the_page_loads_nothing_from_elsewhere() -> None:
    for name in ASSETS:
        text = (WEB_DIR / name).read_text()
        assert "http://" not in text and "https://" not in text, name
        assert "@import" not in text and "innerHTML" not in text, name


def test_etag_revalidation(fake_app_factory: Make) -> None:
    client = fake_app_factory()
    etag = client.get("/web/app.js").headers["etag"]
    again = client.get("/web/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/web/app.js", headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/web/nope.js",
        "/web/",
        "/web/web.py",  # a file next to the router, not an asset
        "/web/%2e%2e%2fapp.py",  # ../app.py, encoded
        "/web/%2e%2e/api/routes/web.py",
        "/web/..%2f..%2fpyproject.toml",
        "/web/%2e%2e%5cindex.html",
        "/web/index.html%00.js",
        "/web/.index.html",
        "/web//etc/passwd",
    ],
)
def test_unknown_assets_and_traversal_are_404_in_the_error_shape(
    fake_app_factory: Make, path: str
) -> None:
    r = fake_app_factory().get(path)
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "not_found" and error["message"]


def test_only_get(fake_app_factory: Make) -> None:
    r = fake_app_factory().post("/web/app.js")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_with_api_keys_the_page_loads_without_a_key_but_the_api_needs_one(
    fake_app_factory: Make,
) -> None:
    client = fake_app_factory(Settings(api_keys=["secret"]))
    assert client.get("/").status_code == 200
    for name in ASSETS:
        assert client.get(f"/web/{name}").status_code == 200
    # the open prefix opens the page's assets only: no way around the key from there
    _not_found(client.get("/web/nope.css"))
    assert client.get("/web/%2e%2e/v1/models").status_code == 404
    r = client.get("/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/collections").status_code == 401
    auth = {"Authorization": "Bearer secret"}
    assert client.get("/v1/models", headers=auth).json()["data"][0]["id"] == "fake:test"


def test_the_page_is_not_in_the_openapi_schema(fake_app_factory: Make) -> None:
    paths = fake_app_factory().get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/web") for p in paths)


def test_the_page_uses_the_api_as_documented() -> None:
    """The fields the page sends are the ones the routes read (a rename breaks this)."""
    js = (WEB_DIR / "app.js").read_text()
    for needle in [
        '"v1/classify"',
        '"v1/models"',
        '"v1/collections"',
        '"readyz"',
        'form.append("files"',
        'form.append("labels"',
        'form.append("templates"',
        'form.append("ids"',
        'form.append("metadata"',
        'form.append("k"',
        "Authorization",
    ]:
        assert needle in js, needle
