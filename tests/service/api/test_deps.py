"""The model dependencies (service/api/deps.py, and the request dependency each model route
declares) resolve the model a request names, loaded and with the capabilities its route
needs, before the route's body runs: every route refuses alike, with the error the routes
answered when they checked in their bodies. Tested through the HTTP routes."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from httpx import Response
from starlette.requests import Request

from contrastkit.service.api.deps import watch_disconnect
from contrastkit.service.api.routes import classify, collections, embed, openai
from contrastkit.service.app import create_app
from contrastkit.service.runtime.disconnect import ClientGoneError, while_client_waits
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, image_bytes, wait_until

Factory = Callable[..., TestClient]
Call = Callable[[TestClient], Response]
IMAGE_ONLY = frozenset({"image"})
REF = "fake"  # every app here serves its model under this reference
PNG = image_bytes(np.zeros((8, 8, 3), np.uint8))
B64 = base64.b64encode(PNG).decode()


def _files() -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", ("a.png", PNG, "image/png"))]


def _post(path: str, **kwargs: Any) -> Call:
    return lambda client: client.post(path, **kwargs)


def _search_text(client: TestClient) -> Response:
    """A text query of a collection in the default model's space."""
    assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
    return client.post("/v1/collections/c/search", json={"queries": [{"text": "hi"}]})


# One request per model route and body shape (`model`: the name to send, if any; OpenAI's
# body always names one) ...
def _needs_text(model: str | None = None) -> dict[str, Call]:
    named = {} if model is None else {"model": model}
    openai = {"model": model or REF}
    return {
        "embed text": _post("/v1/embed/text", json={"texts": ["hi"], **named}),
        "classify json": _post("/v1/classify", json={"images": [B64], "labels": ["a"], **named}),
        "classify form": _post("/v1/classify", files=_files(), data={"labels": ["a"], **named}),
        "openai text": _post("/v1/embeddings", json={"input": "hi", **openai}),
    }


# ... that need only the images
def _needs_images(model: str | None = None) -> dict[str, Call]:
    named = {} if model is None else {"model": model}
    openai = {"model": model or REF}
    return {
        "embed image json": _post("/v1/embed/image", json={"images": [B64], **named}),
        "embed image form": _post("/v1/embed/image", files=_files(), data=named),
        "openai image": _post("/v1/embeddings", json={"input": B64, "modality": "image", **openai}),
    }


NEEDS_TEXT = _needs_text() | {"collection search": _search_text}
NEEDS_IMAGES = _needs_images()
NAMING = _needs_text("gpt-9") | _needs_images("gpt-9")
NEEDS_A_MODEL = _needs_text() | NEEDS_IMAGES | {"models": lambda client: client.get("/v1/models")}


@pytest.fixture
def image_only(fake_app_factory: Factory) -> TestClient:
    """The app over a model that embeds images and no texts."""
    return fake_app_factory(Settings(model=REF), FakeEncoder(capabilities=IMAGE_ONLY))


@pytest.mark.parametrize("call", NEEDS_TEXT.values(), ids=list(NEEDS_TEXT))
def test_every_route_that_embeds_texts_refuses_a_model_without_them_alike(
    image_only: TestClient, call: Call
) -> None:
    r = call(image_only)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {
        "code": "missing_capability",
        "message": "model 'fake:test' has no 'text' capability (it has: image)",
        "detail": None,
    }


@pytest.mark.parametrize("call", NEEDS_IMAGES.values(), ids=list(NEEDS_IMAGES))
def test_a_model_without_texts_still_embeds_images(image_only: TestClient, call: Call) -> None:
    r = call(image_only)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "fake:test"


def test_one_model_without_texts_refuses_before_the_upload_is_read(
    image_only: TestClient,
) -> None:
    """With one model served, its capabilities are known before the body is: a body that
    could not even be read is refused for the capability, not for its form."""
    multipart = {"content-type": "multipart/form-data; boundary=b"}
    r = image_only.post("/v1/classify", content=b"not a form", headers=multipart)
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_capability"


@pytest.mark.parametrize("call", NEEDS_A_MODEL.values(), ids=list(NEEDS_A_MODEL))
def test_every_model_route_answers_503_until_the_model_is_loaded(call: Call) -> None:
    client = TestClient(create_app(Settings(model=REF)))  # no lifespan: it never loads
    r = call(client)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"] == {
        "code": "model_not_ready",
        "message": f"model {REF} is still loading",
        "detail": None,
    }


def test_a_failed_load_is_the_reason_every_model_route_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fails(*_: object) -> FakeEncoder:
        raise OSError("no weights")

    monkeypatch.setattr("contrastkit.service.runtime.served.load_encoder", fails)
    with TestClient(create_app(Settings(model=REF))) as client:
        wait_until(lambda: client.get("/readyz").json()["status"] != "loading", 120, "the load")
        assert client.get("/readyz").json()["reason"] == "OSError: no weights"
        for call in NEEDS_A_MODEL.values():
            r = call(client)
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            assert r.json()["error"]["message"] == "OSError: no weights"


def test_a_request_names_the_model_by_id_or_reference(fake_app_factory: Factory) -> None:
    client = fake_app_factory(Settings(model=REF))
    for name in (None, "fake:test", REF):  # none, its id, the reference it came from
        for call in _needs_text(name).values():
            r = call(client)
            assert r.status_code == 200 and r.json()["model"] == "fake:test", r.text


@pytest.mark.parametrize("call", NAMING.values(), ids=list(NAMING))
def test_a_named_model_must_be_a_served_one(fake_app_factory: Factory, call: Call) -> None:
    r = call(fake_app_factory(Settings(model=REF)))
    assert r.status_code == 404
    assert r.json()["error"] == {
        "code": "model_not_found",
        "message": "model 'gpt-9' is not loaded here; this server serves 'fake:test' "
        "(omit 'model' for the first, or see GET /v1/models)",
        "detail": None,
    }


# -- a client that leaves -------------------------------------------------------------------
EMBEDDING_ROUTES = {
    "/v1/embed/text",
    "/v1/embed/image",
    "/v1/classify",
    "/v1/embeddings",
    "/v1/collections/{name}/items",
    "/v1/collections/{name}/search",
}


def test_every_route_that_embeds_watches_its_client() -> None:
    routers = [embed.router, classify.router, openai.router, collections.router]
    watched = {
        route.path
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        and any(d.call is watch_disconnect for d in route.dependant.dependencies)
    }
    assert watched >= EMBEDDING_ROUTES


def test_the_work_of_a_client_that_left_is_cancelled() -> None:
    async def left() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def request() -> None:
        await watch_disconnect(Request({"type": "http"}, left))
        await while_client_waits(asyncio.sleep(3600))  # an embedding that would take long

    with pytest.raises(ClientGoneError) as e:  # not TimeoutError: the wait was cut short
        asyncio.run(asyncio.wait_for(request(), 60))
    assert e.value.code == "client_closed_request"


def test_a_client_that_stays_gets_its_answer() -> None:
    async def stays() -> dict[str, Any]:
        await asyncio.sleep(30)
        return {"type": "http.disconnect"}

    async def request() -> str:
        await watch_disconnect(Request({"type": "http"}, stays))
        return await while_client_waits(asyncio.sleep(0.01, "answer"))

    assert asyncio.run(request()) == "answer"
