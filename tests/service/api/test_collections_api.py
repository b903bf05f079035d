"""The /v1/collections REST API over the fake 8-d encoder (see tests/helpers.py).

Collections live in each test's temp folder (conftest sets CONTRASTIVE_COLLECTIONS_DIR).
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, image_bytes, wait_ready

Make = Callable[..., TestClient]
C = "/v1/collections"


def _png(colour: tuple[int, int, int]) -> bytes:
    ramp = np.linspace(0.5, 1.0, 24)[None, :, None]
    return image_bytes((np.ones((20, 24, 3)) * np.asarray(colour) * ramp).astype(np.uint8))


RED, GREEN, BLUE = _png((220, 30, 20)), _png((30, 200, 40)), _png((20, 40, 220))
VEC = [3.0, -1.0, 0.5, 0.0, 2.0, 1.0, -2.0, 0.25]


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


def _unit(v: Any) -> np.ndarray:
    a = np.asarray(v, np.float64)
    return a / np.linalg.norm(a)


def _ok(r: Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def _search(client: TestClient, name: str, queries: list[dict[str, Any]], **kw: Any) -> Any:
    return _ok(client.post(f"{C}/{name}/search", json={"queries": queries, **kw}))["results"]


def _count(client: TestClient, name: str) -> int:
    return int(_ok(client.get(f"{C}/{name}"))["count"])


@pytest.fixture(params=["faiss", "qdrant"])
def client(request: pytest.FixtureRequest, fake_app_factory: Make) -> TestClient:
    """The API over each backend: the embedded FAISS store, and Qdrant (qdrant-client's
    local mode in the test's collections folder): the same requests, the same answers."""
    if request.param == "qdrant":
        pytest.importorskip("qdrant_client")
    c = fake_app_factory(Settings(collections_backend=request.param))
    c.headers["x-test-backend"] = request.param  # for the few answers that differ by backend
    return c


def _backend(client: TestClient) -> str:
    return client.headers["x-test-backend"]


@pytest.fixture
def things(client: TestClient) -> TestClient:
    """Collection "things": two texts, two images and a raw vector, with metadata."""
    _ok(client.post(C, json={"name": "things", "index": {"kind": "flat"}}), 201)
    items = [
        {"id": "cat", "text": "a cat", "metadata": {"kind": "animal", "legs": 4}},
        {"id": "bird", "text": "a bird", "metadata": {"kind": "animal", "legs": 2}},
        {"id": "red", "image": _b64(RED), "metadata": {"kind": "colour"}},
        {"id": "pics/blue.png", "image": _b64(BLUE), "metadata": {"kind": "colour"}},
        {"id": "v", "vector": VEC},
    ]
    assert _ok(client.post(f"{C}/things/items", json={"items": items})) == {
        "upserted": 5,
        "count": 5,
    }
    return client


# -- collections --------------------------------------------------------------------------------
def test_create_list_describe_delete(client: TestClient) -> None:
    info = _ok(client.post(C, json={"name": "photos"}), 201)
    assert (info["name"], info["model_id"], info["dim"], info["count"]) == (
        "photos",
        "fake:test",
        8,
        0,
    )
    assert info["index"]["kind"] == "auto" and info["index"]["auto_threshold"] == 50_000
    # below auto_threshold FAISS searches exactly; Qdrant reports the HNSW it keeps
    active = {"faiss": "flat", "qdrant": "hnsw"}[_backend(client)]
    assert info["active_index"] == active and info["status"] == "ok" and info["created_at"]

    spec = {"kind": "hnsw", "m": 16, "ef_search": 64}
    raw = _ok(
        client.post(C, json={"name": "raw.v1", "index": spec, "model_id": "x", "dim": 3}), 201
    )
    assert (raw["model_id"], raw["dim"]) == ("x", 3)
    assert (raw["index"]["kind"], raw["index"]["m"], raw["index"]["ef_search"]) == ("hnsw", 16, 64)

    listed = _ok(client.get(C))["collections"]
    assert [c["name"] for c in listed] == ["photos", "raw.v1"]
    assert _ok(client.get(f"{C}/raw.v1")) == raw

    assert _ok(client.delete(f"{C}/photos")) == {"deleted": "photos"}
    assert [c["name"] for c in _ok(client.get(C))["collections"]] == ["raw.v1"]
    r = client.get(f"{C}/photos")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "collection_not_found")
    # the name is free again
    assert _ok(client.post(C, json={"name": "photos"}), 201)["count"] == 0


# -- upserts -------------------------------------------------------------------------------------
def test_upsert_texts_then_search_by_text(things: TestClient) -> None:
    hits = _search(things, "things", [{"text": "a cat"}], k=3)[0]
    assert len(hits) == 3
    assert hits[0] == {
        "id": "cat",
        "score": pytest.approx(1.0, abs=1e-5),
        "metadata": {"kind": "animal", "legs": 4},
    }
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    stored = _ok(things.get(f"{C}/things/items/cat", params={"include_vector": "true"}))
    expected = FakeEncoder().encode_texts(["a cat"])[0].numpy()
    np.testing.assert_allclose(stored["vector"], expected, atol=1e-5)


def test_upsert_json_images_then_search_by_image(things: TestClient) -> None:
    results = _search(things, "things", [{"image": _b64(RED)}, {"image": _b64(BLUE)}], k=1)
    assert [r[0]["id"] for r in results] == ["red", "pics/blue.png"]
    assert results[0][0]["score"] == pytest.approx(1.0, abs=1e-5)
    stored = _ok(things.get(f"{C}/things/items/pics%2Fblue.png", params={"include_vector": True}))
    assert stored["metadata"] == {"kind": "colour"}
    png = Image.open(io.BytesIO(BLUE))
    np.testing.assert_allclose(
        stored["vector"], FakeEncoder().encode_images([png])[0].numpy(), atol=1e-5
    )


def test_upsert_multipart_files(client: TestClient) -> None:
    _ok(client.post(C, json={"name": "m"}), 201)
    # ids default to the filenames; metadata is a JSON array beside them
    files = [("files", ("red.png", RED, "image/png")), ("files", ("blue.png", BLUE, "image/png"))]
    meta = json.dumps([{"c": "red"}, {"c": "blue"}])
    assert _ok(client.post(f"{C}/m/items", files=files, data={"metadata": meta})) == {
        "upserted": 2,
        "count": 2,
    }
    assert _ok(client.get(f"{C}/m/items/blue.png"))["metadata"] == {"c": "blue"}
    # ids as a JSON array, and as repeated fields
    green = [("files", ("g.png", GREEN, "image/png"))]
    _ok(client.post(f"{C}/m/items", files=green, data={"ids": json.dumps(["green"])}))
    two = [("files", ("a", RED, "image/png")), ("files", ("b", GREEN, "image/png"))]
    _ok(client.post(f"{C}/m/items", files=two, data={"ids": ["red2", "green2"]}))
    assert _count(client, "m") == 5
    assert _ok(client.get(f"{C}/m/items/green2"))["metadata"] == {}
    # metadata as OpenAPI sends an array in multipart: one part (a JSON object) per file
    parts = {"ids": ["red3", "green3"], "metadata": ['{"c": "red"}', '{"c": "green"}']}
    _ok(client.post(f"{C}/m/items", files=two, data=parts))
    assert _ok(client.get(f"{C}/m/items/green3"))["metadata"] == {"c": "green"}
    # multipart search: texts first, then the files
    r = client.post(
        f"{C}/m/search",
        files=[("files", ("q.png", BLUE, "image/png"))],
        data={"texts": json.dumps(["anything"]), "k": "2", "where": json.dumps({"c": "blue"})},
    )
    results = _ok(r)["results"]
    assert len(results) == 2
    assert [h["id"] for h in results[1]] == ["blue.png"]  # the filter leaves one item
    assert results[1][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_upsert_raw_vectors_are_normalised(things: TestClient) -> None:
    item = _ok(things.get(f"{C}/things/items/v", params={"include_vector": True}))
    assert item["id"] == "v" and item["metadata"] == {}
    np.testing.assert_allclose(item["vector"], _unit(VEC), atol=1e-6)
    assert _ok(things.get(f"{C}/things/items/v")) == {"id": "v", "metadata": {}}  # no vector
    # huge and tiny magnitudes normalise without overflow or underflow
    big = [1e300, 0, 0, 0, 0, 0, 0, 1e300]
    tiny = [0, 0, 1e-310, 0, 0, 0, 0, 0]
    items = [{"id": "big", "vector": big}, {"id": "tiny", "vector": tiny}]
    _ok(things.post(f"{C}/things/items", json={"items": items}))
    got = _ok(things.get(f"{C}/things/items/big", params={"include_vector": True}))["vector"]
    np.testing.assert_allclose(got, _unit([1, 0, 0, 0, 0, 0, 0, 1]), atol=1e-6)
    got = _ok(things.get(f"{C}/things/items/tiny", params={"include_vector": True}))["vector"]
    np.testing.assert_allclose(got, [0, 0, 1, 0, 0, 0, 0, 0], atol=1e-6)


def test_upsert_replaces(things: TestClient) -> None:
    new = [0.0, 0, 0, 0, 0, 0, 0, 1]
    body = {"items": [{"id": "cat", "vector": new, "metadata": {"kind": "replaced"}}]}
    assert _ok(things.post(f"{C}/things/items", json=body)) == {"upserted": 1, "count": 5}
    item = _ok(things.get(f"{C}/things/items/cat", params={"include_vector": True}))
    assert item["metadata"] == {"kind": "replaced"}
    np.testing.assert_allclose(item["vector"], new, atol=1e-6)
    top = _search(things, "things", [{"vector": new}], k=1)[0][0]
    assert (top["id"], top["metadata"]) == ("cat", {"kind": "replaced"})
    # the old text vector no longer finds it
    assert _search(things, "things", [{"text": "a cat"}], k=1)[0][0]["score"] < 0.999


def test_duplicate_ids_in_one_batch_last_wins(things: TestClient) -> None:
    items = [
        {"id": "d", "vector": [1, 0, 0, 0, 0, 0, 0, 0], "metadata": {"n": 1}},
        {"id": "e", "vector": [0, 1, 0, 0, 0, 0, 0, 0], "metadata": {"n": 9}},
        {"id": "d", "vector": [0, 0, 2, 0, 0, 0, 0, 0], "metadata": {"n": 2}},
    ]
    assert _ok(things.post(f"{C}/things/items", json={"items": items})) == {
        "upserted": 2,
        "count": 7,
    }
    item = _ok(things.get(f"{C}/things/items/d", params={"include_vector": True}))
    assert item["metadata"] == {"n": 2}
    np.testing.assert_allclose(item["vector"], [0, 0, 1, 0, 0, 0, 0, 0], atol=1e-6)


def test_delete_items(things: TestClient) -> None:
    r = things.post(f"{C}/things/items/delete", json={"ids": ["cat", "red", "not-there"]})
    assert _ok(r) == {"deleted": 2, "count": 3}
    for id_ in ("cat", "red"):
        r = things.get(f"{C}/things/items/{id_}")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "item_not_found")
    ids = {h["id"] for h in _search(things, "things", [{"text": "a cat"}], k=10)[0]}
    assert ids == {"bird", "pics/blue.png", "v"}
    r = things.post(f"{C}/things/items/delete", json={"ids": ["cat"]})
    assert _ok(r) == {"deleted": 0, "count": 3}


# -- search --------------------------------------------------------------------------------------
def test_search_by_vector_and_by_id(things: TestClient) -> None:
    top = _search(things, "things", [{"vector": VEC}], k=1)[0]
    assert top == [{"id": "v", "score": pytest.approx(1.0, abs=1e-5), "metadata": {}}]
    by_id = _search(things, "things", [{"id": "bird"}], k=2)[0]
    assert by_id[0]["id"] == "bird" and by_id[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(by_id) == 2 and by_id[1]["id"] != "bird"


def test_batch_search(things: TestClient) -> None:
    queries = [{"text": "a bird"}, {"image": _b64(RED)}, {"vector": VEC}, {"id": "pics/blue.png"}]
    results = _search(things, "things", queries, k=2)
    assert [r[0]["id"] for r in results] == ["bird", "red", "v", "pics/blue.png"]
    assert all(len(r) == 2 for r in results)
    # k larger than the collection: every item, once
    everything = _search(things, "things", [{"text": "a bird"}], k=1000)[0]
    assert sorted(h["id"] for h in everything) == sorted(
        ["cat", "bird", "red", "pics/blue.png", "v"]
    )


def test_where_filter(things: TestClient) -> None:
    hits = _search(things, "things", [{"text": "a cat"}], k=10, where={"kind": "colour"})[0]
    assert {h["id"] for h in hits} == {"red", "pics/blue.png"}
    assert all(h["metadata"]["kind"] == "colour" for h in hits)
    both = _search(things, "things", [{"text": "a cat"}], k=10, where={"kind": "animal", "legs": 2})
    assert [h["id"] for h in both[0]] == ["bird"]
    assert _search(things, "things", [{"text": "a cat"}], where={"kind": "plant"}) == [[]]


def test_search_empty_collection(client: TestClient) -> None:
    _ok(client.post(C, json={"name": "empty"}), 201)
    assert _search(client, "empty", [{"text": "x"}, {"vector": VEC}], k=5) == [[], []]


@pytest.mark.parametrize("kind", ["flat", "auto", "hnsw"])
def test_exact_top1(client: TestClient, kind: str) -> None:
    """Each item's own vector finds the item first, with score ~1."""
    _ok(client.post(C, json={"name": "exact", "index": {"kind": kind}}), 201)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(60, 8))
    items = [
        {"id": f"i{n}", "vector": v.tolist(), "metadata": {"n": n}} for n, v in enumerate(vecs)
    ]
    _ok(client.post(f"{C}/exact/items", json={"items": items}))
    results = _search(client, "exact", [{"vector": v.tolist()} for v in vecs], k=3)
    for n, hits in enumerate(results):
        assert hits[0]["id"] == f"i{n}" and hits[0]["metadata"] == {"n": n}
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert hits[1]["score"] < hits[0]["score"]


# -- bad input -----------------------------------------------------------------------------------
def _raw(path: str, body: bytes) -> Callable[[TestClient], Response]:
    def send(c: TestClient) -> Response:
        return c.post(path, content=body, headers={"content-type": "application/json"})

    return send


def _items(*items: dict[str, Any]) -> Callable[[TestClient], Response]:
    return lambda c: c.post(f"{C}/c/items", json={"items": list(items)})


def _query(*queries: dict[str, Any], **kw: Any) -> Callable[[TestClient], Response]:
    return lambda c: c.post(f"{C}/c/search", json={"queries": list(queries), **kw})


def _create(body: dict[str, Any]) -> Callable[[TestClient], Response]:
    return lambda c: c.post(C, json=body)


def _form(path: str, **data: Any) -> Callable[[TestClient], Response]:
    files = [("files", ("red.png", RED, "image/png"))]
    return lambda c: c.post(f"{C}/c/{path}", files=files, data=data)


V8 = [1.0, 0, 0, 0, 0, 0, 0, 0]
BAD: dict[str, tuple[Callable[[TestClient], Response], int, str]] = {
    "wrong dimension": (_items({"id": "x", "vector": [1.0, 2.0, 3.0]}), 422, "wrong_dimension"),
    "query wrong dimension": (_query({"vector": [1.0, 2.0]}), 422, "wrong_dimension"),
    "NaN": (
        _raw(f"{C}/c/items", b'{"items":[{"id":"x","vector":[NaN,0,0,0,0,0,0,1]}]}'),
        422,
        "invalid_vector",
    ),
    "Infinity": (
        _raw(f"{C}/c/items", b'{"items":[{"id":"x","vector":[Infinity,0,0,0,0,0,0,1]}]}'),
        422,
        "invalid_vector",
    ),
    "1e999": (
        _raw(f"{C}/c/items", b'{"items":[{"id":"x","vector":[1e999,0,0,0,0,0,0,1]}]}'),
        422,
        "invalid_vector",
    ),
    "query NaN": (
        _raw(f"{C}/c/search", b'{"queries":[{"vector":[NaN,0,0,0,0,0,0,1]}]}'),
        422,
        "invalid_vector",
    ),
    "vector holds a string": (
        _items({"id": "x", "vector": ["1", *V8[1:]]}),
        422,
        "invalid_request",
    ),
    "vector holds a bool": (_items({"id": "x", "vector": [True, *V8[1:]]}), 422, "invalid_request"),
    "zero vector": (_items({"id": "x", "vector": [0.0] * 8}), 422, "invalid_vector"),
    "empty items": (_items(), 422, "empty_input"),
    "too many items": (
        _items(*({"id": f"x{i}", "vector": V8} for i in range(5))),
        422,
        "too_many_items",
    ),
    "empty query list": (_query(), 422, "empty_input"),
    "too many queries": (_query(*({"vector": V8} for _ in range(4))), 422, "too_many_items"),
    "k=0": (_query({"vector": V8}, k=0), 422, "invalid_k"),
    "k=-1": (_query({"vector": V8}, k=-1), 422, "invalid_k"),
    "k=10**9": (_query({"vector": V8}, k=10**9), 422, "invalid_k"),
    "k past max_k": (_query({"vector": V8}, k=51), 422, "invalid_k"),
    "k not an int": (_query({"vector": V8}, k="ten"), 422, "invalid_request"),
    "where not an object": (_query({"vector": V8}, where=[1]), 422, "invalid_request"),
    "unknown collection: describe": (lambda c: c.get(f"{C}/nope"), 404, "collection_not_found"),
    "unknown collection: delete": (lambda c: c.delete(f"{C}/nope"), 404, "collection_not_found"),
    "unknown collection: upsert": (
        lambda c: c.post(f"{C}/nope/items", json={"items": [{"id": "a", "vector": V8}]}),
        404,
        "collection_not_found",
    ),
    "unknown collection: search": (
        lambda c: c.post(f"{C}/nope/search", json={"queries": [{"vector": V8}]}),
        404,
        "collection_not_found",
    ),
    "unknown collection: get": (lambda c: c.get(f"{C}/nope/items/a"), 404, "collection_not_found"),
    "unknown collection: delete items": (
        lambda c: c.post(f"{C}/nope/items/delete", json={"ids": ["a"]}),
        404,
        "collection_not_found",
    ),
    "name ../x": (_create({"name": "../x"}), 422, "invalid_name"),
    "name a/b": (_create({"name": "a/b"}), 422, "invalid_name"),
    "name empty": (_create({"name": ""}), 422, "invalid_name"),
    "name ..": (_create({"name": ".."}), 422, "invalid_name"),
    "name .hidden": (_create({"name": ".hidden"}), 422, "invalid_name"),
    "name too long": (_create({"name": "x" * 100}), 422, "invalid_name"),
    "name with a..b": (_create({"name": "a..b"}), 422, "invalid_name"),
    "path name .hidden": (lambda c: c.get(f"{C}/.hidden"), 422, "invalid_name"),
    "existing collection": (_create({"name": "c"}), 409, "collection_exists"),
    "dim unlike the model": (_create({"name": "d", "dim": 3}), 422, "wrong_dimension"),
    "other model without dim": (_create({"name": "d", "model_id": "o:m"}), 422, "invalid_request"),
    "bad index kind": (_create({"name": "d", "index": {"kind": "lsh"}}), 422, "invalid_request"),
    "bad index param": (
        _create({"name": "d", "index": {"kind": "ivf", "nprobe": 0}}),
        422,
        "invalid_request",
    ),
    "text and vector": (_items({"id": "x", "text": "a", "vector": V8}), 422, "invalid_request"),
    "neither text nor vector": (_items({"id": "x", "metadata": {}}), 422, "invalid_request"),
    "query with two sources": (_query({"text": "a", "id": "a"}), 422, "invalid_request"),
    "unknown item field": (_items({"id": "x", "vector": V8, "meta": {}}), 422, "invalid_request"),
    "metadata a list": (_items({"id": "x", "vector": V8, "metadata": [1]}), 422, "invalid_request"),
    "metadata a string": (
        _items({"id": "x", "vector": V8, "metadata": "m"}),
        422,
        "invalid_request",
    ),
    "metadata NaN": (
        _raw(
            f"{C}/c/items",
            b'{"items":[{"id":"x","vector":[1,0,0,0,0,0,0,0],"metadata":{"a":NaN}}]}',
        ),
        422,
        "invalid_metadata",
    ),
    "metadata too deep": (
        _items({"id": "x", "vector": V8, "metadata": json.loads('{"a":' * 40 + "1" + "}" * 40)}),
        422,
        "invalid_metadata",
    ),
    "empty id": (_items({"id": "", "vector": V8}), 422, "invalid_request"),
    "id too long": (_items({"id": "x" * 257, "vector": V8}), 422, "invalid_request"),
    "id not a string": (_items({"id": 5, "vector": V8}), 422, "invalid_request"),
    "blank text": (_items({"id": "x", "text": "  "}), 422, "empty_text"),
    "bad base64": (_items({"id": "x", "image": "not base64!"}), 422, "invalid_base64"),
    "not an image": (_items({"id": "x", "image": _b64(b"hello")}), 422, "image_decode_failed"),
    "unknown item: get": (lambda c: c.get(f"{C}/c/items/nope"), 404, "item_not_found"),
    "unknown item: search by id": (_query({"id": "nope"}), 404, "item_not_found"),
    "invalid JSON": (_raw(f"{C}/c/items", b'{"items": ['), 422, "invalid_json"),
    "not JSON": (
        lambda c: c.post(f"{C}/c/search", content=b"x", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    ),
    "delete no ids": (
        lambda c: c.post(f"{C}/c/items/delete", json={"ids": []}),
        422,
        "empty_input",
    ),
    "multipart ids miscounted": (
        _form("items", ids=json.dumps(["a", "b"])),
        422,
        "invalid_request",
    ),
    "multipart metadata not an object": (_form("items", metadata="5"), 422, "invalid_metadata"),
    "multipart metadata two for one file": (
        _form("items", metadata=['{"a": 1}', '{"a": 2}']),
        422,
        "invalid_metadata",
    ),
    "multipart metadata not object": (_form("items", metadata="[5]"), 422, "invalid_metadata"),
    "multipart file without a name": (
        lambda c: c.post(f"{C}/c/items", files=[("files", ("", RED, "image/png"))]),
        422,
        "invalid_request",
    ),
    "multipart too many files": (
        lambda c: c.post(
            f"{C}/c/items", files=[("files", (f"{i}", RED, "image/png")) for i in range(5)]
        ),
        422,
        "too_many_items",
    ),
    "multipart unknown field": (_form("items", labels="x"), 422, "invalid_request"),
    "multipart k not an int": (_form("search", k="many"), 422, "invalid_k"),
    "multipart where not JSON": (_form("search", where="{"), 422, "invalid_request"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(fake_app_factory: Make, case: str) -> None:
    client = fake_app_factory(Settings(max_items=4, max_queries=3, max_k=50))
    _ok(client.post(C, json={"name": "c"}), 201)
    _ok(client.post(f"{C}/c/items", json={"items": [{"id": "a", "vector": V8}]}))
    send, status, code = BAD[case]
    r = send(client)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and "detail" in err
    # nothing was written, nothing else changed
    listed = _ok(client.get(C))["collections"]
    assert [(c["name"], c["count"]) for c in listed] == [("c", 1)]


def test_model_mismatch(client: TestClient) -> None:
    _ok(client.post(C, json={"name": "other", "model_id": "other:model", "dim": 8}), 201)
    for body in (
        {"items": [{"id": "t", "text": "a cat"}]},
        {"items": [{"id": "i", "image": _b64(RED)}]},
    ):
        r = client.post(f"{C}/other/items", json=body)
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "model_mismatch"
        assert "other:model" in err["message"] and "fake:test" in err["message"]
    r = client.post(f"{C}/other/search", json={"queries": [{"text": "a cat"}]})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "model_mismatch")
    assert _count(client, "other") == 0
    # raw vectors of that space are welcome
    body = {"items": [{"id": "r", "vector": VEC}]}
    assert _ok(client.post(f"{C}/other/items", json=body)) == {"upserted": 1, "count": 1}
    assert _search(client, "other", [{"id": "r"}], k=1)[0][0]["id"] == "r"


def test_openapi_documents_both_bodies(client: TestClient) -> None:
    spec = _ok(client.get("/openapi.json"))
    body = spec["paths"][f"{C}/{{name}}/items"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    schemas = spec["components"]["schemas"]
    for media, name in (
        ("application/json", "UpsertRequest"),
        ("multipart/form-data", "UpsertForm"),
    ):
        assert body[media]["schema"] == {"$ref": f"#/components/schemas/{name}"}
    assert "items" in schemas["UpsertRequest"]["properties"]
    assert {"files", "ids", "metadata"} <= set(schemas["UpsertForm"]["properties"])
    assert "$defs" not in json.dumps(spec)


def test_data_survives_a_restart(tmp_path: Path) -> None:
    settings = Settings(collections_dir=str(tmp_path / "persist"))
    with TestClient(create_app(settings, encoder=FakeEncoder())) as c1:
        wait_ready(c1)
        _ok(c1.post(C, json={"name": "keep"}), 201)
        items = [
            {"id": "cat", "text": "a cat", "metadata": {"k": "pet"}},
            {"id": "red", "image": _b64(RED)},
            {"id": "v", "vector": VEC},
        ]
        _ok(c1.post(f"{C}/keep/items", json={"items": items}))
        _ok(c1.post(f"{C}/keep/items/delete", json={"ids": ["v"]}))
    with TestClient(create_app(settings, encoder=FakeEncoder())) as c2:
        wait_ready(c2)
        info = _ok(c2.get(f"{C}/keep"))
        assert (info["count"], info["status"]) == (2, "ok")
        results = _search(c2, "keep", [{"text": "a cat"}, {"image": _b64(RED)}], k=1)
        assert results[0][0] == {
            "id": "cat",
            "score": pytest.approx(1.0, abs=1e-5),
            "metadata": {"k": "pet"},
        }
        assert results[1][0]["id"] == "red"
        r = c2.get(f"{C}/keep/items/v")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "item_not_found")


def test_where_operators(things: TestClient) -> None:
    """$in, numeric ranges and $exists, on either backend; k hits come back when k match."""

    def ids(where: dict[str, Any], k: int = 10) -> list[str]:
        return sorted(
            h["id"] for h in _search(things, "things", [{"vector": VEC}], k=k, where=where)[0]
        )

    assert ids({"kind": {"$in": ["colour", "plant"]}}) == ["pics/blue.png", "red"]
    assert ids({"legs": {"$gt": 2}}) == ["cat"]
    assert ids({"legs": {"$gte": 2, "$lt": 4}}) == ["bird"]
    assert ids({"legs": {"$exists": True}}) == ["bird", "cat"]
    assert ids({"legs": {"$exists": False}}) == ["pics/blue.png", "red", "v"]
    assert ids({"kind": "animal", "legs": {"$lte": 4}}) == ["bird", "cat"]
    assert len(ids({"kind": "colour"}, k=2)) == 2  # both colours, though 3 items rank higher


@pytest.mark.parametrize(
    ("where", "names"),
    [
        ({"legs": {"$near": 3}}, "$near"),
        ({"$or": [{"a": 1}]}, "$or"),
        ({"legs": {"$gt": "four"}}, "$gt"),
        ({"kind": {"$in": "animal"}}, "$in"),
        ({"legs": {}}, "legs"),
    ],
)
def test_a_bad_filter_is_a_422_naming_the_operator(
    things: TestClient, where: dict[str, Any], names: str
) -> None:
    r = things.post(f"{C}/things/search", json={"queries": [{"vector": VEC}], "where": where})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_filter" and names in err["message"], err


def test_an_unreachable_qdrant_is_503_backend_unavailable() -> None:
    pytest.importorskip("qdrant_client")
    url = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
    settings = Settings(collections_backend="qdrant", qdrant_url=url, qdrant_timeout=2)
    with TestClient(create_app(settings, encoder=FakeEncoder())) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "backend_unavailable" and url in ready.json()["reason"]
        for method, path, body in [
            ("GET", C, None),
            ("POST", C, {"name": "photos"}),
            ("POST", f"{C}/photos/search", {"queries": [{"vector": VEC}]}),
        ]:
            r = client.request(method, path, json=body)
            assert r.status_code == 503, (path, r.text)
            err = r.json()["error"]
            assert err["code"] == "backend_unavailable" and url in err["message"], err
        # embeddings do not need the backend: the replica still embeds
        assert client.post("/v1/embed/text", json={"texts": ["a cat"]}).status_code == 200


def test_compressed_kinds_over_the_api(client: TestClient) -> None:
    for kind in ("ivfpq", "hnsw_sq8"):
        info = _ok(client.post(C, json={"name": kind, "index": {"kind": kind, "pq_m": 4}}), 201)
        assert info["index"]["kind"] == kind and info["index"]["refine"] == 16
        _ok(client.post(f"{C}/{kind}/items", json={"items": [{"id": "v", "vector": VEC}]}))
        assert _search(client, kind, [{"vector": VEC}], k=1)[0][0]["id"] == "v"
    r = client.post(C, json={"name": "bad", "index": {"kind": "ivfpq", "pq_m": 3}})
    assert r.status_code == 422 and "must divide the dimension 8" in r.json()["error"]["message"]
