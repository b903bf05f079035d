"""/v1/admin/migrations: a collection moved to another served model while it serves.

Two tiny CLIP exports with different weights are the old and the new model, both served.
Items are texts whose source is their text, and images whose source is their file. A
migration is slowed, where a test needs it under way, by a stand-in for the re-embedding
that waits on an event (`Gate`).
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image

from contrastkit.service.app import create_app
from contrastkit.service.commands.index.images import read_image
from contrastkit.service.commands.index.reembed import Reembedder
from contrastkit.service.settings import Settings
from contrastkit.training.encoders import load_encoder
from tests.helpers import (
    wait_ready,
    wait_until,
)

BOSS = {"Authorization": "Bearer boss"}
M, C = "/v1/admin/migrations", "/v1/collections"
TEXTS = [f"item number {i}" for i in range(12)]


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        files.append(tmp_path / f"p{i}.png")
        Image.fromarray(rng.integers(0, 255, (30, 28 + i, 3), dtype=np.uint8)).save(files[-1])
    return files


@pytest.fixture(params=["faiss"])
def client(
    request: pytest.FixtureRequest, tmp_path: Path, models: tuple[str, str], photos: list[Path]
) -> Iterator[TestClient]:
    """Both models served (the old the default), `photos` filled with the old one: the
    texts and the images, each with its source; alias `live` -> `photos`. The backend:
    FAISS, or what a test parametrizes `client` with."""
    if request.param == "qdrant":
        pytest.importorskip("qdrant_client")
    settings = Settings(
        model=models[0], models=[models[1]], device="cpu", admin_keys=["boss"],
        collections_dir=str(tmp_path / "cols"), collections_backend=request.param,
    )  # fmt: skip
    with TestClient(create_app(settings), headers=BOSS) as c:
        wait_ready(c)
        _ok(c.post(C, json={"name": "photos", "index": {"kind": "flat"}}), 201)
        items = [{"id": f"t{i}", "text": t, "source": t} for i, t in enumerate(TEXTS)]
        items += [_image_item(f) for f in photos]
        _ok(c.post(f"{C}/photos/items", json={"items": items}))
        _ok(c.put("/v1/aliases/live", json={"collection": "photos"}))
        yield c


def _image_item(f: Path) -> dict[str, Any]:
    data = base64.b64encode(f.read_bytes()).decode()
    return {"id": f.name, "image": data, "source": str(f)}


def _ok(r: Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def _error(r: Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return str(r.json()["error"]["message"])


def _new_id(c: TestClient, models: tuple[str, str]) -> str:
    return str(next(m["id"] for m in _ok(c.get("/v1/models"))["data"] if m["id"] != _old(c)))


def _old(c: TestClient) -> str:
    return str(_ok(c.get(f"{C}/photos"))["model_id"])


def _ended(c: TestClient, name: str = "photos") -> dict[str, Any]:
    wait_until(lambda: _ok(c.get(f"{M}/{name}"))["state"] != "running", what="the migration")
    body: dict[str, Any] = _ok(c.get(f"{M}/{name}"))
    return body


class Gate:
    """Re-embedding that waits for `open` before each batch (and counts the batches)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open, self.batches = threading.Event(), 0
        real = Reembedder.embed

        def embed(reembedder: Reembedder, items: list[Any]) -> Any:
            self.batches += 1
            assert self.open.wait(60), "the test never let the migration go on"
            return real(reembedder, items)

        monkeypatch.setattr(Reembedder, "embed", embed)


@pytest.mark.parametrize("client", ["faiss", "qdrant"], indirect=True)
def test_a_migration_rebuilds_in_the_new_space_and_switches_the_alias(
    client: TestClient, models: tuple[str, str], photos: list[Path]
) -> None:
    new_model = _new_id(client, models)
    started = _ok(client.post(M, json={"collection": "live", "model": new_model}), 202)
    assert (started["collection"], started["alias"], started["state"]) == (
        "photos", "live", "running",
    )  # fmt: skip
    done = _ended(client)
    assert done["state"] == "switched", done
    assert (done["missing_count"], done["previous"]) == (0, "photos")
    assert 0 <= done["held_seconds"] < 30  # writes waited only for the last pass
    assert _ok(client.get("/v1/aliases"))["aliases"] == [
        {"alias": "live", "collection": done["new"]}
    ]
    new = _ok(client.get(f"{C}/live"))
    assert (new["name"], new["model_id"], new["count"]) == (done["new"], new_model, 15)
    assert new["migration"]["state"] == "switched"  # progress in the collection's description
    assert _ok(client.get(f"{C}/photos"))["count"] == 15  # the old one stays, for rollback
    enc = load_encoder(models[1], device="cpu")
    want_text = enc.encode_texts(TEXTS[:1]).numpy()[0]
    got = _ok(client.get(f"{C}/live/items/t0", params={"include_vector": True}))
    np.testing.assert_allclose(got["vector"], want_text, atol=1e-5)
    image = read_image(photos[0], 10**9, enc.info.preprocess.size)[1]
    got = _ok(client.get(f"{C}/live/items/{photos[0].name}", params={"include_vector": True}))
    np.testing.assert_allclose(got["vector"], enc.encode_images([image]).numpy()[0], atol=1e-5)
    assert got["source"] == str(photos[0])


def test_searches_by_alias_answer_throughout_and_never_mix_spaces(
    client: TestClient, models: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    body = {"collection": "live", "model": _new_id(client, models), "batch": 4}
    _ok(client.post(M, json=body), 202)
    answers: list[tuple[int, str | None, float]] = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            r = client.post(f"{C}/live/search", json={"queries": [{"text": TEXTS[3]}], "k": 1})
            hit = r.json()["results"][0][0] if r.status_code == 200 else {}
            answers.append((r.status_code, hit.get("id"), hit.get("score", 0.0)))

    searcher = threading.Thread(target=search)
    searcher.start()
    wait_until(lambda: gate.batches >= 1 and len(answers) >= 3, what="searches mid-migration")
    gate.open.set()
    assert _ended(client)["state"] == "switched"
    switched = len(answers)
    wait_until(lambda: len(answers) >= switched + 3, what="searches after the switch")
    stop.set()
    searcher.join()
    # the query is embedded by the model of the collection it searches: the stored copy
    # of the same text is found with cosine 1 before the switch and after, never lower
    assert {status for status, _, _ in answers} == {200}
    assert {hit for _, hit, _ in answers} == {"t3"}
    assert min(score for _, _, score in answers) > 0.999


@pytest.mark.parametrize("client", ["faiss", "qdrant"], indirect=True)
def test_writes_during_a_migration_are_in_the_new_collection(
    client: TestClient, models: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    _ok(client.post(M, json={"collection": "live", "model": _new_id(client, models)}), 202)
    wait_until(lambda: gate.batches >= 1, what="the migration under way")
    added = {"items": [{"id": "late", "text": "a late arrival", "source": "a late arrival"}]}
    _ok(client.post(f"{C}/live/items", json=added))
    _ok(client.post(f"{C}/live/items/delete", json={"ids": ["t5"]}))
    gate.open.set()
    done = _ended(client)
    assert done["state"] == "switched"
    new = _ok(client.get(f"{C}/live"))
    assert new["name"] == done["new"] and new["count"] == 15  # 15 + late - t5
    assert _ok(client.get(f"{C}/live/items/late"))["source"] == "a late arrival"
    _error(client.get(f"{C}/live/items/t5"), 404, "item_not_found")


def test_a_cancelled_migration_leaves_the_old_serving_and_resumes(
    client: TestClient, models: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    body = {"collection": "live", "model": _new_id(client, models), "batch": 5}
    _ok(client.post(M, json=body), 202)
    wait_until(lambda: gate.batches >= 1, what="the migration under way")
    assert _ok(client.delete(f"{M}/live"))["state"] == "running"  # asked; stops after the batch
    gate.open.set()
    cancelled = _ended(client)
    assert cancelled["state"] == "cancelled"
    assert _ok(client.get(f"{C}/live"))["name"] == "photos"  # the alias did not move
    partial = _ok(client.get(f"{C}/{cancelled['new']}"))["count"]
    assert partial == 5  # the one batch done before the stop
    resumed = _ok(client.post(M, json=body), 202)
    assert resumed["new"] == cancelled["new"]
    assert _ended(client)["state"] == "switched"
    assert _ok(client.get(f"{C}/live"))["count"] == 15


def test_items_without_a_source_are_listed_and_block_the_switch(
    client: TestClient, models: tuple[str, str]
) -> None:
    _ok(client.post(f"{C}/photos/items", json={"items": [{"id": "bare", "text": "no source"}]}))
    body = {"collection": "live", "model": _new_id(client, models)}
    _ok(client.post(M, json=body), 202)
    built = _ended(client)
    assert (built["state"], built["missing_count"]) == ("built", 1)
    assert built["missing"] == [{"id": "bare", "source": None, "reason": "no source stored"}]
    assert _ok(client.get(f"{C}/live"))["name"] == "photos"
    _ok(client.post(M, json={**body, "allow_missing": True}), 202)
    switched = _ended(client)
    assert (switched["state"], switched["missing_count"]) == ("switched", 1)
    assert _ok(client.get(f"{C}/live"))["count"] == 15


def test_bad_migration_requests_get_4xx(client: TestClient, models: tuple[str, str]) -> None:
    new_model = _new_id(client, models)
    # a collection (not an alias) needs the alias to switch
    msg = _error(client.post(M, json={"collection": "photos", "model": new_model}), 409,
                 "migration_refused")  # fmt: skip
    assert "--alias" in msg or "alias" in msg
    same = {"collection": "live", "model": _old(client)}
    assert "already holds" in _error(client.post(M, json=same), 409, "migration_refused")
    _error(client.post(M, json={"collection": "nope", "model": new_model, "alias": "x"}), 404,
           "collection_not_found")  # fmt: skip
    _error(client.post(M, json={"collection": "live", "model": "open_clip:nope"}), 404,
           "model_not_found")  # fmt: skip
    for bad in ({"collection": "live"}, {"collection": "live", "model": new_model, "batch": 0},
                {"collection": "../x", "model": new_model},
                {"collection": "live", "model": new_model, "extra": 1}):  # fmt: skip
        _error(client.post(M, json=bad), 422, "invalid_request")
    _error(client.get(f"{M}/photos"), 404, "migration_not_found")
    _error(client.delete(f"{M}/photos"), 404, "migration_not_found")
    unauthorised = client.post(M, json=same, headers={"Authorization": ""})
    assert unauthorised.status_code == 401, unauthorised.text


def test_a_second_migration_of_the_same_collection_is_refused_while_one_runs(
    client: TestClient, models: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    body = {"collection": "live", "model": _new_id(client, models)}
    _ok(client.post(M, json=body), 202)
    wait_until(lambda: gate.batches >= 1, what="the migration under way")
    _error(client.post(M, json=body), 409, "migration_running")
    gate.open.set()
    assert _ended(client)["state"] == "switched"
    assert len(_ok(client.get(M))["migrations"]) == 1


def test_without_admin_keys_migrations_are_off(tmp_path: Path, models: tuple[str, str]) -> None:
    settings = Settings(model=models[0], device="cpu", collections_dir=str(tmp_path / "c"))
    with TestClient(create_app(settings)) as c:
        r = c.post(M, json={"collection": "a", "model": "b"})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "admin_disabled"
        assert "admin API is off" in r.json()["error"]["message"]
