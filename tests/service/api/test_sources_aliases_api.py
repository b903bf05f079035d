"""Item sources and /v1/aliases over HTTP, on each backend (the fake 8-d encoder)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from contrastkit.service.app import create_app
from contrastkit.service.index.items import MAX_SOURCE_BYTES
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, wait_ready

Make = Callable[..., TestClient]
C, A = "/v1/collections", "/v1/aliases"
VEC = [3.0, -1.0, 0.5, 0.0, 2.0, 1.0, -2.0, 0.25]


def _ok(r: Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def _error(r: Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == code, body
    return str(body["message"])


@pytest.fixture(params=["faiss", "qdrant"])
def client(request: pytest.FixtureRequest, fake_app_factory: Make) -> TestClient:
    if request.param == "qdrant":
        pytest.importorskip("qdrant_client")
    return fake_app_factory(Settings(collections_backend=request.param))


def _collection(client: TestClient, name: str, item: str) -> None:
    _ok(client.post(C, json={"name": name, "index": {"kind": "flat"}}), 201)
    _ok(client.post(f"{C}/{name}/items", json={"items": [{"id": item, "vector": VEC}]}))


def test_a_source_is_stored_and_read_back(client: TestClient) -> None:
    _ok(client.post(C, json={"name": "docs", "index": {"kind": "flat"}}), 201)
    items = [
        {"id": "cat", "text": "a cat", "source": "a cat"},
        {"id": "v", "vector": VEC, "source": "https://example.org/v.png"},
        {"id": "plain", "vector": [1.0] * 8},
    ]
    _ok(client.post(f"{C}/docs/items", json={"items": items}))
    assert _ok(client.get(f"{C}/docs/items/v"))["source"] == "https://example.org/v.png"
    assert "source" not in _ok(client.get(f"{C}/docs/items/plain"))  # absent, not null
    hits = _ok(client.post(f"{C}/docs/search", json={"queries": [{"vector": VEC}], "k": 3}))
    by_id = {h["id"]: h for h in hits["results"][0]}
    assert by_id["v"]["source"] == "https://example.org/v.png"
    assert by_id["cat"]["source"] == "a cat" and "source" not in by_id["plain"]


def test_a_source_past_the_limit_is_a_422_naming_it(client: TestClient) -> None:
    _ok(client.post(C, json={"name": "docs"}), 201)
    items = [{"id": "a", "vector": VEC}, {"id": "b", "vector": VEC, "source": "x" * 3000}]
    message = _error(client.post(f"{C}/docs/items", json={"items": items}), 422, "invalid_source")
    assert "items[1].source" in message and str(MAX_SOURCE_BYTES) in message
    assert _ok(client.get(f"{C}/docs"))["count"] == 0  # nothing of the request is stored


def test_an_alias_serves_every_collection_route(client: TestClient) -> None:
    _collection(client, "v1", "one")
    _collection(client, "v2", "two")
    got = _ok(client.put(f"{A}/live", json={"collection": "v1"}))
    assert got == {"alias": "live", "collection": "v1", "previous": None}
    assert _ok(client.get(A)) == {"aliases": [{"alias": "live", "collection": "v1"}]}
    search = {"queries": [{"vector": VEC}], "k": 1}
    assert _ok(client.post(f"{C}/live/search", json=search))["results"][0][0]["id"] == "one"
    assert _ok(client.get(f"{C}/live"))["name"] == "v1"
    body = {"items": [{"id": "new", "vector": VEC, "source": "/n"}]}
    _ok(client.post(f"{C}/live/items", json=body))
    assert _ok(client.get(f"{C}/v1/items/new"))["source"] == "/n"
    assert _ok(client.get(f"{C}/live/items/new"))["id"] == "new"
    assert _ok(client.post(f"{C}/live/items/delete", json={"ids": ["new"]}))["deleted"] == 1

    got = _ok(client.put(f"{A}/live", json={"collection": "v2"}))  # the switch
    assert got["previous"] == "v1"
    assert _ok(client.post(f"{C}/live/search", json=search))["results"][0][0]["id"] == "two"
    assert _ok(client.delete(f"{A}/live")) == {"deleted": "live", "collection": "v2"}
    _error(client.post(f"{C}/live/search", json=search), 404, "collection_not_found")
    _error(client.delete(f"{A}/live"), 404, "alias_not_found")


def test_alias_conflicts_are_409_and_404(client: TestClient) -> None:
    _collection(client, "v1", "one")
    _collection(client, "v2", "two")
    _ok(client.put(f"{A}/live", json={"collection": "v1"}))
    _error(client.put(f"{A}/v2", json={"collection": "v1"}), 409, "alias_conflict")
    _error(client.put(f"{A}/x", json={"collection": "nope"}), 404, "collection_not_found")
    _error(client.post(C, json={"name": "live"}), 409, "alias_conflict")
    message = _error(client.delete(f"{C}/v1"), 409, "collection_aliased")
    assert "'live'" in message
    _error(client.delete(f"{C}/live"), 409, "alias_conflict")
    _error(client.put(f"{A}/live", json={}), 422, "invalid_request")
    assert _ok(client.get(f"{C}/v1"))["count"] == 1  # nothing was dropped


def test_aliases_and_sources_survive_a_restart(tmp_path: Path) -> None:
    settings = Settings(collections_dir=str(tmp_path / "persist"))
    with TestClient(create_app(settings, encoder=FakeEncoder())) as c1:
        wait_ready(c1)
        _ok(c1.post(C, json={"name": "v1"}), 201)
        items = [{"id": "a", "vector": VEC, "source": "/data/a.jpg"}]
        _ok(c1.post(f"{C}/v1/items", json={"items": items}))
        _ok(c1.put(f"{A}/live", json={"collection": "v1"}))
    with TestClient(create_app(settings, encoder=FakeEncoder())) as c2:
        wait_ready(c2)
        assert _ok(c2.get(f"{C}/live/items/a"))["source"] == "/data/a.jpg"
        assert _ok(c2.get(A))["aliases"] == [{"alias": "live", "collection": "v1"}]


def test_the_alias_routes_are_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for method in ("put", "delete"):
        op = paths["/v1/aliases/{alias}"][method]
        assert {"404", "409", "422"} <= set(op["responses"])
        (param,) = [p for p in op["parameters"] if p["name"] == "alias"]
        assert "pattern" in param["schema"]
    assert "get" in paths["/v1/aliases"]


def test_with_collections_off_the_aliases_are_refused(fake_app_factory: Make) -> None:
    """With collections off, listing and setting aliases are 404 collections_disabled."""
    c = fake_app_factory(Settings(collections=False))
    listed = c.get(A)
    assert listed.status_code == 404
    assert listed.json()["error"]["code"] == "collections_disabled"
    put = c.put(f"{A}/live", json={"collection": "photos"})
    assert (put.status_code, put.json()["error"]["code"]) == (404, "collections_disabled")
