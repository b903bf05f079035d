"""The route dependencies (service/api/deps.py) refuse what a route cannot be served with,
with the same error the routes answered before they moved there."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api import deps
from service.domain_errors import ModelError
from service.errors import http_status
from service.metrics import Metrics
from service.settings import Settings
from service.state import ServiceState
from tests.helpers import FakeEncoder

Factory = Callable[..., TestClient]
IMAGE_ONLY = frozenset({"image"})


@pytest.fixture
def bare_state() -> Iterator[ServiceState]:
    """A state whose model has not loaded (yet)."""
    state = ServiceState(settings=Settings(), metrics=Metrics())
    yield state
    for pool in (state.model_pool, state.decode_pool, state.index_pool):
        pool.shutdown(wait=False)


def _refusal(dep: Callable[[deps.ModelHandle], Awaitable[Any]], state: ServiceState) -> ModelError:
    with pytest.raises(ModelError) as e:
        asyncio.run(dep(deps.ModelHandle(state)))
    return e.value


@pytest.mark.parametrize(
    "dep", [deps.text_encoder, deps.text_embedder, deps.classifiers], ids=lambda d: d.__name__
)
def test_a_text_dependency_refuses_an_image_only_model(
    fake_app_factory: Factory, dep: Callable[[deps.ModelHandle], Awaitable[Any]]
) -> None:
    client = fake_app_factory(encoder=FakeEncoder(capabilities=IMAGE_ONLY))
    err = _refusal(dep, client.app.state.service)  # type: ignore[attr-defined]
    assert (err.code, http_status(err.code)) == ("missing_capability", 400)
    # word for word what the route answers (and answered when the route checked itself)
    r = client.post("/v1/embed/text", json={"texts": ["hi"]})
    assert r.status_code == 400
    assert r.json()["error"] == {"code": err.code, "message": err.message, "detail": None}
    assert "has no 'text' capability (it has: image)" in err.message


def test_an_image_dependency_resolves_what_the_model_can_do(fake_app_factory: Factory) -> None:
    client = fake_app_factory(encoder=FakeEncoder(capabilities=IMAGE_ONLY))
    state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
    handle = deps.ModelHandle(state)
    assert asyncio.run(deps.image_encoder(handle)) is state.encoder
    assert asyncio.run(deps.image_embedder(handle)) is state.images


@pytest.mark.parametrize(
    "dep",
    [deps.loaded_encoder, deps.image_encoder, deps.text_embedder],
    ids=lambda d: d.__name__,
)
def test_every_model_dependency_waits_for_the_model(
    bare_state: ServiceState, dep: Callable[[deps.ModelHandle], Awaitable[Any]]
) -> None:
    err = _refusal(dep, bare_state)
    assert (err.code, err.message, err.retry_after) == (
        "model_not_ready",
        "model builtin is still loading",
        5,
    )
    bare_state.load_error = "OSError: no weights"
    assert _refusal(dep, bare_state).message == "OSError: no weights"


def test_model_not_ready_answers_503_with_retry_after(bare_state: ServiceState) -> None:
    from service.app import create_app

    app = create_app(Settings())
    app.state.service = bare_state  # no lifespan: the model never loads
    r = TestClient(app).post("/v1/embed/text", json={"texts": ["hi"]})
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"]["code"] == "model_not_ready"


def test_a_named_model_must_be_a_served_one(fake_app_factory: Factory) -> None:
    client = fake_app_factory(Settings(model="fake"))
    state: ServiceState = client.app.state.service  # type: ignore[attr-defined]
    enc = state.encoder
    assert enc is not None
    for name in (None, enc.model_id, "fake"):  # none, its id, the reference it came from
        assert state.model_for(name) is state.default
    with pytest.raises(ModelError) as e:
        state.model_for("gpt-9")
    assert e.value.code == "model_not_found" and "'gpt-9'" in e.value.message
    assert repr(enc.model_id) in e.value.message  # it lists what is served


def test_the_openapi_references_all_resolve(fake_app_factory: Factory) -> None:
    """openapi_extra bodies are components: no reference points at a missing schema."""
    spec = fake_app_factory().get("/openapi.json").json()
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    schemas = spec["components"]["schemas"]
    assert (
        refs and [r for r in refs if r.removeprefix("#/components/schemas/") not in schemas] == []
    )
    for path in ("/v1/embed/image", "/v1/classify"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]
        ref = body["application/json"]["schema"]["$ref"]
        assert "images" in schemas[ref.removeprefix("#/components/schemas/")]["properties"]


def test_the_classify_bodies_state_the_labels_times_templates_limit(
    fake_app_factory: Factory,
) -> None:
    schemas = fake_app_factory().get("/openapi.json").json()["components"]["schemas"]
    limit = Settings().max_classify_texts
    for component in ("ClassifyRequest", "ClassifyForm"):
        text = schemas[component]["description"]
        assert f"must not exceed {limit}" in text and "too_many_items" in text
