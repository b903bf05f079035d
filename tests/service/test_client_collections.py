"""The clients' collection methods against the real app over the fake 8-d encoder.

Driven as in test_client.py: the sync client through FastAPI's TestClient, the async one
through httpx.ASGITransport with the app's lifespan on the test's event loop. Collections
live in the test's temp folder (see conftest).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from contrastkit.service.app import create_app
from contrastkit.service.client import (
    AsyncContrastiveClient,
    CollectionSummary,
    ContrastiveClient,
    Item,
    SearchMatch,
    ServiceError,
)
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, image_bytes, wait_ready


def _image(colour: tuple[int, int, int]) -> Image.Image:
    ramp = np.linspace(0.5, 1.0, 40)[None, :, None]
    return Image.fromarray((np.ones((30, 40, 3)) * np.asarray(colour) * ramp).astype(np.uint8))


RED, BLUE = _image((220, 30, 20)), _image((20, 40, 220))
VEC = np.array([3.0, -1.0, 0.5, 0.0, 2.0, 1.0, -2.0, 0.25])


@pytest.fixture
def encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def client(encoder: FakeEncoder) -> Iterator[ContrastiveClient]:
    with TestClient(create_app(Settings(), encoder=encoder)) as tc:
        wait_ready(tc)
        with ContrastiveClient(http=tc) as c:
            yield c


def test_round_trip(client: ContrastiveClient, encoder: FakeEncoder, tmp_path: Path) -> None:
    info = client.create_collection("things", index="flat")
    assert isinstance(info, CollectionSummary)
    assert (info.name, info.model_id, info.dim, info.count) == ("things", "fake:test", 8, 0)
    assert info.index["kind"] == "flat" and info.active_index == "flat"
    assert info.status == "ok" and info.created_at

    animal, colour = {"kind": "animal"}, {"kind": "colour"}
    assert client.add("things", ["cat", "dog"], texts=["a cat", "a dog"], metadata=[animal] * 2)
    blue_path = tmp_path / "blue.png"
    blue_path.write_bytes(image_bytes(BLUE))
    # images as PIL, as a path, and an id that looks like a file path (slashes travel)
    n = client.add(
        "things", ["red", "pics/blue.png"], images=[RED, blue_path], metadata=[colour] * 2
    )
    assert n == 2
    assert client.add("things", ["v"], vectors=VEC[None, :]) == 1
    assert client.describe_collection("things").count == 5

    hits = client.search("things", text="a cat", k=3)
    assert len(hits) == 3 and all(isinstance(h, SearchMatch) for h in hits)
    assert hits[0] == SearchMatch("cat", pytest.approx(1.0, abs=1e-5), animal)  # type: ignore[arg-type]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert client.search("things", image=RED, k=1)[0].id == "red"
    assert client.search("things", image=image_bytes(BLUE), k=1)[0].id == "pics/blue.png"
    assert client.search("things", vector=VEC.tolist(), k=1)[0].id == "v"
    assert client.search("things", id="dog", k=1)[0].id == "dog"
    filtered = client.search("things", text="a cat", k=10, where=colour)
    assert {h.id for h in filtered} == {"red", "pics/blue.png"}

    many = client.search_many(
        "things", [{"text": "a dog"}, {"image": RED}, {"vector": VEC}, {"id": "cat"}], k=2
    )
    assert [hits[0].id for hits in many] == ["dog", "red", "v", "cat"]
    assert all(len(hits) == 2 for hits in many)

    item = client.get_item("things", "cat")
    assert isinstance(item, Item)
    assert (item.id, item.metadata, item.vector) == ("cat", animal, None)
    item = client.get_item("things", "pics/blue.png", include_vector=True)
    assert item.metadata == colour and item.vector is not None
    assert item.vector.dtype == np.float32 and item.vector.shape == (8,)
    np.testing.assert_allclose(item.vector, encoder.encode_images([BLUE])[0].numpy(), atol=1e-5)
    stored = client.get_item("things", "v", include_vector=True).vector
    np.testing.assert_allclose(stored, VEC / np.linalg.norm(VEC), atol=1e-6)  # normalised
    assert client.get_item("things", "v").metadata == {}
    # an item named "delete" is stored and found, but no GET can name it: said at once
    assert client.add("things", ["delete"], texts=["a note"]) == 1
    with pytest.raises(ValueError, match="search with the query"):
        client.get_item("things", "delete")
    assert client.search("things", id="delete", k=1)[0].id == "delete"
    assert client.delete_items("things", ["delete"]) == 1

    assert client.delete_items("things", ["cat", "not-there"]) == 1
    with pytest.raises(ServiceError) as err:
        client.get_item("things", "cat")
    assert (err.value.status, err.value.code) == (404, "item_not_found")

    client.create_collection("raw", model_id="other-space", dim=3)
    assert [c.name for c in client.list_collections()] == ["raw", "things"]
    client.delete_collection("things")
    assert [c.name for c in client.list_collections()] == ["raw"]
    with pytest.raises(ServiceError) as err:
        client.describe_collection("things")
    assert (err.value.status, err.value.code) == (404, "collection_not_found")


def test_service_errors(client: ContrastiveClient) -> None:
    client.create_collection("c")
    with pytest.raises(ServiceError) as err:
        client.create_collection("c")
    assert (err.value.status, err.value.code) == (409, "collection_exists")
    with pytest.raises(ServiceError) as err:
        client.create_collection("../escape")
    assert err.value.status == 422
    with pytest.raises(ServiceError) as err:
        client.add("c", ["short"], vectors=[[1.0, 2.0]])
    assert (err.value.status, err.value.code) == (422, "wrong_dimension")
    with pytest.raises(ServiceError) as err:
        client.search("c", text="x", k=0)
    assert (err.value.status, err.value.code) == (422, "invalid_k")

    client.create_collection("raw", model_id="other-space", dim=3)
    with pytest.raises(ServiceError) as err:
        client.add("raw", ["t"], texts=["a cat"])
    assert (err.value.status, err.value.code) == (409, "model_mismatch")
    assert "other-space" in err.value.message and "fake:test" in err.value.message
    assert client.add("raw", ["r"], vectors=np.eye(3, dtype=np.float32)[:1]) == 1


def test_bad_arguments_fail_before_sending(client: ContrastiveClient) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        client.add("c", ["a"], texts=["a"], vectors=[[1.0]])
    with pytest.raises(ValueError, match="exactly one"):
        client.add("c", ["a"])
    with pytest.raises(ValueError, match="2 ids but 1"):
        client.add("c", ["a", "b"], texts=["a"])
    with pytest.raises(ValueError, match="metadata"):
        client.add("c", ["a"], texts=["a"], metadata=[{}, {}])
    with pytest.raises(TypeError, match="sequence"):
        client.add("c", "a", texts=["a"])
    with pytest.raises(ValueError, match="exactly one"):
        client.search("c", text="a", id="b")
    with pytest.raises(ValueError, match=r"queries\[1\]"):
        client.search_many("c", [{"text": "a"}, {"txt": "b"}])


# -- async client ---------------------------------------------------------------------------


def test_async_round_trip(encoder: FakeEncoder) -> None:
    app = create_app(Settings(), encoder=encoder)

    async def main() -> None:
        async with app.router.lifespan_context(app):
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            async with http, AsyncContrastiveClient(http=http) as client:
                deadline = time.monotonic() + 120
                while not await client.ready():
                    assert time.monotonic() < deadline, "not ready"
                    await asyncio.sleep(0.02)
                info = await client.create_collection("things")
                assert (info.name, info.dim, info.count) == ("things", 8, 0)
                added = await asyncio.gather(
                    client.add("things", ["cat", "dog"], texts=["a cat", "a dog"]),
                    client.add("things", ["dir/red.png"], images=[RED], metadata=[{"c": "r"}]),
                    client.add("things", ["v"], vectors=[VEC]),
                )
                assert added == [2, 1, 1]
                assert (await client.describe_collection("things")).count == 4
                hits = await client.search("things", text="a dog", k=2)
                assert hits[0].id == "dog" and len(hits) == 2
                many = await client.search_many(
                    "things", [{"image": RED}, {"id": "v"}], k=1, where=None
                )
                assert [h[0].id for h in many] == ["dir/red.png", "v"]
                assert (await client.search("things", image=RED, where={"c": "r"}))[0].metadata == {
                    "c": "r"
                }
                item = await client.get_item("things", "dir/red.png", include_vector=True)
                assert item.metadata == {"c": "r"} and item.vector is not None
                assert await client.delete_items("things", ["dog"]) == 1
                with pytest.raises(ServiceError) as err:
                    await client.get_item("things", "dog")
                assert err.value.code == "item_not_found"
                assert [c.name for c in await client.list_collections()] == ["things"]
                await client.delete_collection("things")
                assert await client.list_collections() == []
                with pytest.raises(ServiceError) as err:
                    await client.delete_collection("things")
                assert (err.value.status, err.value.code) == (404, "collection_not_found")

    asyncio.run(main())
