"""Admission before any per-item work: a request the image batcher refuses costs no
base64 decoding, and an admitted one has its base64 decoded in the decode pool, never on
the event loop. Error messages still name the image by its place in the request."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, image_bytes, wait_ready

Factory = Callable[..., TestClient]
PNG = base64.b64encode(image_bytes(np.full((32, 32, 3), 127, np.uint8))).decode()
# one request of every route that takes base64 images in JSON: (path, body)
ROUTES = [
    ("/v1/embed/image", {"images": [PNG, PNG]}),
    ("/v1/embeddings", {"model": "fake:test", "input": [PNG, PNG], "modality": "image"}),
    ("/v1/classify", {"images": [PNG, PNG], "labels": ["cat", "dog"]}),
]


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the threads that base64-decoded anything, one per call (spied on
    base64 itself, so no import style of the service's can hide a call)."""
    seen: list[str] = []
    real = base64.b64decode

    def spy(value: str | bytes, *args: Any, **kwargs: Any) -> bytes:
        seen.append(threading.current_thread().name)
        return real(value, *args, **kwargs)

    monkeypatch.setattr(base64, "b64decode", spy)
    yield seen


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=[p for p, _ in ROUTES])
def test_a_refused_request_decodes_no_base64(
    fake_app_factory: Factory, decodes: list[str], path: str, body: dict[str, object]
) -> None:
    client = fake_app_factory(Settings(max_queue=4))
    batcher = client.app.state.service.models.default.require().images.batcher  # type: ignore[attr-defined]
    batcher.pending = 4  # as if four images were queued: the next one is over the limit
    try:
        r = client.post(path, json=body)
    finally:
        batcher.pending = 0
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
    assert decodes == []


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=[p for p, _ in ROUTES])
def test_base64_is_decoded_in_the_decode_pool(
    fake_app_factory: Factory, decodes: list[str], path: str, body: dict[str, object]
) -> None:
    client = fake_app_factory()
    assert client.post(path, json=body).status_code == 200
    assert len(decodes) == 2 and all(name.startswith("decode") for name in decodes)


def test_a_bad_image_is_named_by_its_place_in_a_mixed_request(fake_app_factory: Factory) -> None:
    client = fake_app_factory()
    inputs = [{"text": "a cat"}, {"image": PNG}, {"image": "not base64!"}]
    r = client.post("/v1/embeddings", json={"model": "fake:test", "input": inputs})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_base64"
    assert "image 2 " in r.json()["error"]["message"]


@dataclass
class Counted:
    """A client of an app whose reads of request bodies are counted."""

    client: TestClient
    app: FastAPI
    reads: list[str]  # the `http.request` messages the app has read, all requests together


@pytest.fixture
def counted(tmp_path: Path) -> Iterator[Counted]:
    app = create_app(Settings(max_queue=4, collections_dir=str(tmp_path)), encoder=FakeEncoder())
    reads: list[str] = []

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        async def read() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                reads.append(message["type"])
            return message

        await app(scope, read, send)

    with TestClient(counting) as client:
        wait_ready(client)
        yield Counted(client, app, reads)


def _fill(app: FastAPI, *modalities: str) -> Callable[[], None]:
    """As if the queues of `modalities` held max_queue items (4): -> the undo."""
    model = app.state.service.models.default.require()
    batchers = [model.images.batcher if m == "image" else model.texts.batcher for m in modalities]
    for b in batchers:
        b.pending = 4

    def undo() -> None:
        for b in batchers:
            b.pending = 0

    return undo


IMAGE_FILE = [("files", ("a.png", base64.b64decode(PNG), "image/png"))]
EARLY = [
    ("/v1/embed/text", ("text",), {"json": {"texts": ["a cat"]}}),
    ("/v1/embed/image", ("image",), {"files": IMAGE_FILE}),
    ("/v1/classify", ("image",), {"files": IMAGE_FILE, "data": {"labels": ["cat"]}}),
    ("/v1/embeddings", ("text", "image"), {"json": {"model": "fake:test", "input": "a cat"}}),
]


@pytest.mark.parametrize(("path", "full", "send"), EARLY, ids=[p for p, _, _ in EARLY])
def test_overload_is_refused_before_the_request_is_read(
    counted: Counted, path: str, full: tuple[str, ...], send: dict[str, Any]
) -> None:
    """With one model served, a request that its full queue would refuse is refused before
    its body is read: the 503 costs no JSON, multipart or base64 parsing."""
    assert counted.client.post(path, **send).status_code == 200  # read when there is room
    assert counted.reads
    counted.reads.clear()
    undo = _fill(counted.app, *full)
    try:
        r = counted.client.post(path, **send)
    finally:
        undo()
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text
    assert r.headers["retry-after"] == "1"
    assert counted.reads == []


def test_a_request_that_may_need_another_queue_is_read(counted: Counted) -> None:
    """/v1/embeddings may hold only images: a full text queue does not refuse it unread."""
    undo = _fill(counted.app, "text")
    try:
        body = {"model": "fake:test", "input": [PNG], "modality": "image"}
        r = counted.client.post("/v1/embeddings", json=body)
    finally:
        undo()
    assert r.status_code == 200, r.text
    assert counted.reads
