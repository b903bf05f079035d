"""POST /v1/collections/{name}/duplicates: planted near copies of real photos are found,
through the built-in model, exactly (flat) and through an HNSW index; bad inputs are 4xx
in the error body; the scan bound (max_duplicate_scan) over the fake encoder."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import skimage.data
from fastapi.testclient import TestClient
from PIL import Image

from contrastkit.service.settings import Settings
from tests.helpers import image_bytes

C = "/v1/collections"
PLANTED = ("astronaut", "coffee", "chelsea", "rocket")  # each with two near copies
# Photos with no copy. Not hubble_deep_field: the built-in model puts it at 0.86 from
# moon and clock (all dark, speckled), nearer than some planted copies are.
ALONE = ("camera", "coins", "moon", "immunohistochemistry", "colorwheel", "clock", "brick")
# Measured with the built-in model: a photo and its copies score 0.885 at least (the
# astronaut at JPEG quality 60), two different photos 0.63 at most (coins, colorwheel).
# 0.75 sits between the two with a margin of about 0.12 each way.
THRESHOLD = 0.75


def _rgb(name: str) -> np.ndarray:
    a = np.asarray(getattr(skimage.data, name)())
    return np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]


def _photos() -> list[tuple[str, bytes, dict[str, Any]]]:
    """(id, file, metadata): every photo as PNG; the planted ones also re-encoded as JPEG
    (quality 60) and resized to 0.8x."""
    out = []
    for name in PLANTED + ALONE:
        a = _rgb(name)
        out.append((f"{name}.png", image_bytes(a), {"photo": name}))
        if name in PLANTED:
            small = Image.fromarray(a)
            small = small.resize((int(small.width * 0.8), int(small.height * 0.8)))
            out.append((f"{name}-q60.jpg", image_bytes(a, "JPEG", quality=60), {"photo": name}))
            out.append((f"{name}-small.png", image_bytes(small), {"photo": name}))
    return out


def _group(name: str) -> list[str]:
    return sorted([f"{name}.png", f"{name}-q60.jpg", f"{name}-small.png"])


def _ok(r: Any) -> Any:  # an httpx Response (TestClient's own httpx may differ)
    assert r.status_code == 200, r.text
    return r.json()


def _dups(client: TestClient, name: str, **body: Any) -> Any:
    return _ok(client.post(f"{C}/{name}/duplicates", json=body))


@pytest.fixture(scope="module")
def photos(builtin_client: TestClient) -> TestClient:
    """Collections "dups" (flat) with the photos embedded by the built-in model, and
    "dups-hnsw" (an HNSW index) with the same vectors."""
    c = builtin_client
    for name, index in (("dups", "flat"), ("dups-hnsw", "hnsw")):
        c.delete(f"{C}/{name}")  # the client lives for the session
        assert c.post(C, json={"name": name, "index": {"kind": index}}).status_code == 201
    items = _photos()
    files = [("files", (id_, blob, "image/png")) for id_, blob, _ in items]
    form = {
        "ids": json.dumps([i for i, *_ in items]),
        "metadata": json.dumps([m for *_, m in items]),
    }
    _ok(c.post(f"{C}/dups/items", files=files, data=form))
    copied = []
    for id_, _, meta in items:
        vector = _ok(c.get(f"{C}/dups/items/{id_}", params={"include_vector": True}))["vector"]
        copied.append({"id": id_, "vector": vector, "metadata": meta})
    _ok(c.post(f"{C}/dups-hnsw/items", json={"items": copied}))
    return c


def test_every_planted_group_is_found_and_no_other(photos: TestClient) -> None:
    got = _dups(photos, "dups", threshold=THRESHOLD)
    assert [g["ids"] for g in got["groups"]] == sorted(_group(n) for n in PLANTED)
    assert got["exact"] is True and got["truncated"] is False
    assert got["n_items_scanned"] == len(PLANTED) * 3 + len(ALONE)
    for g in got["groups"]:
        assert THRESHOLD <= g["min_similarity"] <= g["max_similarity"] <= 1.0


def test_the_hnsw_index_finds_the_same_groups(photos: TestClient) -> None:
    flat = _dups(photos, "dups", threshold=THRESHOLD)
    graph = _dups(photos, "dups-hnsw", threshold=THRESHOLD)
    assert graph["exact"] is False
    assert [g["ids"] for g in graph["groups"]] == [g["ids"] for g in flat["groups"]]


def test_the_filter_restricts_the_scan(photos: TestClient) -> None:
    where = {"photo": {"$in": ["coffee", "rocket", "moon"]}}
    for name in ("dups", "dups-hnsw"):
        got = _dups(photos, name, threshold=THRESHOLD, filter=where)
        assert [g["ids"] for g in got["groups"]] == [_group("coffee"), _group("rocket")]
        assert got["n_items_scanned"] == 7


def test_limit_and_max_items_truncate(photos: TestClient) -> None:
    got = _dups(photos, "dups", threshold=THRESHOLD, limit=1)
    assert len(got["groups"]) == 1 and got["n_groups"] == 4 and got["truncated"] is True
    # ids scroll in sorted order: the first 3 are astronaut's group
    got = _dups(photos, "dups", threshold=THRESHOLD, max_items=3)
    assert [g["ids"] for g in got["groups"]] == [_group("astronaut")]
    assert got["n_items_scanned"] == 3 and got["truncated"] is True


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("dups", {"threshold": 0}, 422, "invalid_request"),
        ("dups", {"threshold": 1.5}, 422, "invalid_request"),
        ("dups", {"threshold": "0.9"}, 422, "invalid_request"),
        ("dups", {"limit": 1001}, 422, "invalid_request"),
        ("dups", {"unknown": 1}, 422, "invalid_request"),
        ("dups", {"filter": {"photo": {"$near": 1}}}, 422, "invalid_filter"),
        ("no-such-collection", {}, 404, "collection_not_found"),
    ],
)
def test_bad_inputs_are_4xx_in_the_error_body(
    photos: TestClient, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    r = photos.post(f"{C}/{path}/duplicates", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_a_scan_past_the_bound_is_refused_naming_it(
    fake_app_factory: Callable[..., TestClient],
) -> None:
    client = fake_app_factory(Settings(max_duplicate_scan=4))
    assert client.post(C, json={"name": "big"}).status_code == 201
    dim = _ok(client.get(f"{C}/big"))["dim"]
    vectors = np.random.default_rng(0).normal(size=(6, dim))
    items = [
        {"id": f"v{i}", "vector": vectors[i % 3].tolist(), "metadata": {"part": i % 2}}
        for i in range(6)
    ]
    _ok(client.post(f"{C}/big/items", json={"items": items}))
    for body in ({}, {"max_items": 5}, {"filter": {"part": {"$gte": 0}}}):
        r = client.post(f"{C}/big/duplicates", json=body)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "scan_too_large"
        assert "4" in error["message"] and "filter" in error["message"]
    # v0 = v3 (part 0, 1): a filter under the bound scans; so does max_items
    got = _dups(client, "big", filter={"part": 0})
    assert got["n_items_scanned"] == 3 and got["groups"] == []
    got = _dups(client, "big", threshold=1.0, max_items=4)
    assert [g["ids"] for g in got["groups"]] == [["v0", "v3"]] and got["truncated"] is True
