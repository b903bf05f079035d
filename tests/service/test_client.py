"""contrastkit.service.client against the real app over a tiny deterministic fake encoder (no real
model).

The sync client drives the app through FastAPI's TestClient (an httpx.Client); the async
client through httpx.ASGITransport, with the app's lifespan run on the test's own event loop
(the service's batchers are bound to the loop that started them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from contrastkit.service.app import create_app
from contrastkit.service.client import (
    AsyncContrastiveClient,
    Classification,
    ContrastiveClient,
    Embeddings,
    RankedLabel,
    ServiceError,
)
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder as _Fake
from tests.helpers import image_bytes, wait_ready

LABELS = ["cat", "dog", "car", "tree"]
TEMPLATES = ("a photo of a {}.", "a drawing of a {}.")


def FakeEncoder() -> _Fake:  # noqa: N802 - reads as the class it builds
    return _Fake(default_templates=TEMPLATES)


def _image(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    """A small RGB image: a horizontal gradient over `colour`, so pixels are not all equal."""
    w, h = size
    ramp = np.linspace(0.5, 1.0, w)[None, :, None]
    arr = (np.ones((h, w, 3)) * np.asarray(colour)[None, None, :] * ramp).astype(np.uint8)
    return Image.fromarray(arr)


def _expected_probabilities(
    enc: _Fake, image: Image.Image, labels: list[str], templates: tuple[str, ...]
) -> np.ndarray:
    """What /v1/classify should answer, computed directly: [L] softmax probabilities."""
    img = enc.encode_images([image])[0]
    texts = [t.replace("{}", label) for label in labels for t in templates]
    emb = enc.encode_texts(texts).reshape(len(labels), len(templates), -1).mean(dim=1)
    weights = torch.nn.functional.normalize(emb, dim=-1)
    return (enc.logit_scale * (weights @ img)).softmax(dim=-1).numpy()


@pytest.fixture
def encoder() -> _Fake:
    return FakeEncoder()


@pytest.fixture
def server(encoder: _Fake) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), encoder=encoder)) as tc:
        wait_ready(tc)
        yield tc


@pytest.fixture
def client(server: TestClient) -> Iterator[ContrastiveClient]:
    with ContrastiveClient(http=server) as c:
        yield c


# -- sync client ----------------------------------------------------------------------------


def test_ready_and_models(client: ContrastiveClient) -> None:
    assert client.ready() is True
    (card,) = client.models()
    assert card["id"] == "fake:test"
    assert card["dim"] == 8
    assert card["capabilities"] == ["image", "text"]


def test_embed_texts_matches_encoder(client: ContrastiveClient, encoder: _Fake) -> None:
    texts = ["a cat", "a dog", "a cat"]
    emb = client.embed_texts(texts)
    assert isinstance(emb, Embeddings)
    assert (emb.model, emb.dim, len(emb)) == ("fake:test", 8, 3)
    assert emb.vectors.shape == (3, 8)
    assert emb.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb.vectors, encoder.encode_texts(texts).numpy(), atol=1e-6)
    assert not np.allclose(emb.vectors[0], emb.vectors[1])


def test_embed_images_path_bytes_and_pil_agree(
    client: ContrastiveClient, encoder: _Fake, tmp_path: Path
) -> None:
    image = _image((200, 60, 20))
    path = tmp_path / "orange.png"
    path.write_bytes(image_bytes(image))
    other = _image((20, 60, 200))

    emb = client.embed_images([path, str(path), image_bytes(image), image, other])
    assert emb.vectors.shape == (5, 8)
    assert emb.vectors.dtype == np.float32
    for row in emb.vectors[1:4]:
        np.testing.assert_allclose(row, emb.vectors[0], atol=1e-6)
    assert not np.allclose(emb.vectors[4], emb.vectors[0], atol=1e-3)
    expected = encoder.encode_images([image, other]).numpy()
    np.testing.assert_allclose(emb.vectors[[0, 4]], expected, atol=1e-5)
    # One image per request gives the same vector as inside a batch.
    np.testing.assert_allclose(client.embed_images([image]).vectors[0], expected[0], atol=1e-5)


def test_classify_rankings(client: ContrastiveClient, encoder: _Fake) -> None:
    images = [_image((200, 60, 20)), _image((20, 60, 200))]
    results = client.classify(images, LABELS)  # default templates of the model
    assert [r.index for r in results] == [0, 1]
    for r, image in zip(results, images, strict=True):
        assert isinstance(r, Classification)
        assert all(isinstance(s, RankedLabel) for s in r.ranking)
        assert sorted(s.label for s in r.ranking) == sorted(LABELS)
        probs = [s.probability for s in r.ranking]
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert all(-1.0 - 1e-6 <= s.score <= 1.0 + 1e-6 for s in r.ranking)
        assert r.top == r.ranking[0]
        expected = _expected_probabilities(encoder, image, LABELS, TEMPLATES)
        got = {s.label: s.probability for s in r.ranking}
        np.testing.assert_allclose([got[lab] for lab in LABELS], expected, atol=1e-5)


def test_classify_templates_and_top_k(client: ContrastiveClient, encoder: _Fake) -> None:
    image = _image((90, 200, 40))
    full = client.classify([image], LABELS, templates=["{}"])[0]
    expected = _expected_probabilities(encoder, image, LABELS, ("{}",))
    assert full.top.label == LABELS[int(expected.argmax())]
    top2 = client.classify([image], LABELS, templates=["{}"], top_k=2)[0]
    assert len(top2.ranking) == 2
    assert top2.ranking == full.ranking[:2]
    assert sum(s.probability for s in top2.ranking) < 1.0


def test_invalid_template_raises_service_error(client: ContrastiveClient) -> None:
    with pytest.raises(ServiceError) as info:
        client.classify([_image((1, 2, 3))], LABELS, templates=["a photo of a cat"])
    err = info.value
    assert err.status == 422
    assert err.code == "invalid_template"
    assert "templates[0]" in err.message
    assert "422" in str(err) and "invalid_template" in str(err) and err.message in str(err)


def test_empty_inputs_raise_service_error(client: ContrastiveClient) -> None:
    with pytest.raises(ServiceError) as info:
        client.embed_texts([])
    assert (info.value.status, info.value.code) == (422, "empty_input")
    assert "texts" in info.value.message
    with pytest.raises(ServiceError) as info:
        client.embed_images([])
    assert (info.value.status, info.value.code) == (422, "empty_input")
    with pytest.raises(ServiceError) as info:
        client.classify([], LABELS)
    assert (info.value.status, info.value.code) == (422, "empty_input")


def test_undecodable_image_carries_server_message(client: ContrastiveClient) -> None:
    with pytest.raises(ServiceError) as info:
        client.embed_images([image_bytes(_image((1, 2, 3))), b"not an image"])
    assert info.value.code == "image_decode_failed"
    assert "image 1" in info.value.message


def test_scalar_instead_of_list_is_rejected(client: ContrastiveClient) -> None:
    with pytest.raises(TypeError, match="sequence"):
        client.embed_texts("a cat")
    with pytest.raises(TypeError, match="sequence"):
        client.embed_images(image_bytes(_image((1, 2, 3))))  # type: ignore[arg-type]


def test_api_key() -> None:
    app = create_app(Settings(api_keys=["k1"]), encoder=FakeEncoder())
    with TestClient(app) as tc:
        wait_ready(tc)
        anonymous = ContrastiveClient(http=tc)
        assert anonymous.ready() is True  # the health probes stay open
        with pytest.raises(ServiceError) as info:
            anonymous.embed_texts(["a cat"])
        assert (info.value.status, info.value.code) == (401, "unauthorized")
        with pytest.raises(ServiceError) as info:
            ContrastiveClient(api_key="wrong", http=tc).models()
        assert info.value.status == 401
        keyed = ContrastiveClient(api_key="k1", http=tc)
        assert keyed.embed_texts(["a cat"]).vectors.shape == (1, 8)
        assert keyed.models()[0]["id"] == "fake:test"


def test_owned_client_sends_bearer_and_parses_non_json_errors() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/readyz":
            return httpx.Response(503, json={"status": "loading", "reason": "loading"})
        return httpx.Response(502, text="upstream went away")

    transport = httpx.MockTransport(handler)
    with ContrastiveClient("http://svc:9000/base", api_key="k1", transport=transport) as c:
        assert c.ready() is False
        with pytest.raises(ServiceError) as info:
            c.embed_texts(["x"])
    assert (info.value.status, info.value.code) == (502, "http_error")
    assert info.value.message == "upstream went away"
    assert "502" in str(info.value)
    assert [str(r.url) for r in seen] == [
        "http://svc:9000/base/readyz",
        "http://svc:9000/base/v1/embed/text",
    ]
    assert all(r.headers["authorization"] == "Bearer k1" for r in seen)


def test_close_leaves_a_passed_client_open(server: TestClient) -> None:
    ContrastiveClient(http=server).close()
    assert not server.is_closed
    assert server.get("/healthz").status_code == 200


# -- async client ---------------------------------------------------------------------------


async def _async_ready(client: AsyncContrastiveClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not await client.ready():
        assert time.monotonic() < deadline, "not ready"
        await asyncio.sleep(0.02)


def test_async_embed_texts_and_classify(encoder: _Fake) -> None:
    app = create_app(Settings(), encoder=encoder)
    image = _image((200, 60, 20))

    async def main() -> tuple[Embeddings, list[Classification], list[Classification]]:
        async with app.router.lifespan_context(app):
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            async with http, AsyncContrastiveClient(http=http) as client:
                await _async_ready(client)
                emb, default, top1 = await asyncio.gather(
                    client.embed_texts(["a cat", "a dog"]),
                    client.classify([image, image_bytes(image)], LABELS),
                    client.classify([image], LABELS, templates=["{}"], top_k=1),
                )
                assert not http.is_closed  # a passed-in client is left open
                return emb, default, top1

    emb, default, top1 = asyncio.run(main())
    assert emb.vectors.shape == (2, 8) and emb.vectors.dtype == np.float32
    expected_texts = encoder.encode_texts(["a cat", "a dog"]).numpy()
    np.testing.assert_allclose(emb.vectors, expected_texts, atol=1e-6)
    assert [r.index for r in default] == [0, 1]
    assert default[0].ranking == default[1].ranking  # PIL image and its PNG bytes
    probs = [s.probability for s in default[0].ranking]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    expected = _expected_probabilities(encoder, image, LABELS, TEMPLATES)
    assert default[0].top.label == LABELS[int(expected.argmax())]
    assert len(top1[0].ranking) == 1


def test_async_errors_and_api_key() -> None:
    app = create_app(Settings(api_keys=["k1"]), encoder=FakeEncoder())

    async def main() -> tuple[ServiceError, ServiceError, Embeddings]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with AsyncContrastiveClient("http://t", transport=transport) as anonymous:
                await _async_ready(anonymous)
                with pytest.raises(ServiceError) as unauthorised:
                    await anonymous.embed_texts(["a cat"])
            async with AsyncContrastiveClient("http://t", "k1", transport=transport) as keyed:
                with pytest.raises(ServiceError) as bad_template:
                    await keyed.classify([_image((1, 2, 3))], LABELS, templates=["no slot"])
                emb = await keyed.embed_images([_image((1, 2, 3))])
            return unauthorised.value, bad_template.value, emb

    unauthorised, bad_template, emb = asyncio.run(main())
    assert (unauthorised.status, unauthorised.code) == (401, "unauthorized")
    assert (bad_template.status, bad_template.code) == (422, "invalid_template")
    assert "no slot" in bad_template.message
    assert emb.vectors.shape == (1, 8)


# -- retries on 503/429 ---------------------------------------------------------------------
def _flaky(statuses: list[int], headers: dict[str, str]) -> tuple[httpx.MockTransport, list[int]]:
    """A transport answering `statuses` in turn (with `headers`), then 200 embeddings."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) <= len(statuses):
            error = {"error": {"code": "overloaded", "message": "full", "detail": None}}
            return httpx.Response(statuses[len(calls) - 1], json=error, headers=headers)
        return httpx.Response(
            200, json={"model": "fake:test", "dim": 2, "embeddings": [[1.0, 0.0]]}
        )

    return httpx.MockTransport(handler), calls


def test_503_with_retry_after_is_retried_then_succeeds() -> None:
    transport, calls = _flaky([503], {"Retry-After": "0"})
    with ContrastiveClient("http://svc", transport=transport) as c:
        assert c.embed_texts(["x"]).vectors.shape == (1, 2)
    assert len(calls) == 2


def test_retries_exhausted_raise_the_last_answer() -> None:
    transport, calls = _flaky([503] * 10, {"Retry-After": "0"})
    with (
        ContrastiveClient("http://svc", transport=transport, retries=2) as c,
        pytest.raises(ServiceError) as info,
    ):
        c.embed_texts(["x"])
    assert (info.value.status, info.value.code) == (503, "overloaded")
    assert len(calls) == 3  # the first try and 2 retries


def test_429_is_retried_but_other_errors_and_ready_are_not() -> None:
    transport, calls = _flaky([429], {"Retry-After": "0"})
    with ContrastiveClient("http://svc", transport=transport) as c:
        c.embed_texts(["x"])
    assert len(calls) == 2
    for status in (400, 401, 422, 500, 502):
        transport, calls = _flaky([status], {"Retry-After": "0"})
        with (
            ContrastiveClient("http://svc", transport=transport) as c,
            pytest.raises(ServiceError),
        ):
            c.embed_texts(["x"])
        assert len(calls) == 1, status
    # a readiness probe's 503 is its answer ("not ready"), not an overload to wait out
    transport, calls = _flaky([503], {"Retry-After": "0"})
    with ContrastiveClient("http://svc", transport=transport) as c:
        assert c.ready() is False
    assert len(calls) == 1


def test_a_retry_after_beyond_max_wait_is_not_slept(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("contrastkit.service.client.sync.time.sleep", slept.append)
    transport, calls = _flaky([503], {"Retry-After": "30"})
    with (
        ContrastiveClient("http://svc", transport=transport, retries=5, max_wait=10) as c,
        pytest.raises(ServiceError),
    ):
        c.embed_texts(["x"])
    assert len(calls) == 1 and slept == []


def test_backoff_without_retry_after_grows_and_stays_within_max_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("contrastkit.service.client.sync.time.sleep", slept.append)
    transport, calls = _flaky([503] * 20, {})
    with (
        ContrastiveClient("http://svc", transport=transport, retries=10, max_wait=2.0) as c,
        pytest.raises(ServiceError),
    ):
        c.embed_texts(["x"])
    assert 0 < len(slept) < 10 and len(calls) == len(slept) + 1
    assert sum(slept) <= 2.0
    for attempt, wait in enumerate(slept):  # 0.25 s x 2**attempt, jittered to [half, all]
        assert 0.125 * 2**attempt <= wait <= 0.25 * 2**attempt
    with pytest.raises(ValueError):
        ContrastiveClient("http://svc", retries=-1)


def test_retries_zero_turns_retrying_off() -> None:
    transport, calls = _flaky([503], {"Retry-After": "0"})
    with (
        ContrastiveClient("http://svc", transport=transport, retries=0) as c,
        pytest.raises(ServiceError),
    ):
        c.embed_texts(["x"])
    assert len(calls) == 1


def test_async_client_retries_503_too() -> None:
    async def run() -> tuple[int, int]:
        # MockTransport serves both the sync and the async client
        transport, calls = _flaky([503], {"Retry-After": "0"})
        async with AsyncContrastiveClient("http://svc", transport=transport) as c:
            assert (await c.embed_texts(["x"])).vectors.shape == (1, 2)
        ok_calls = len(calls)
        transport, calls = _flaky([503] * 10, {"Retry-After": "0"})
        async with AsyncContrastiveClient("http://svc", transport=transport, retries=1) as c:
            with pytest.raises(ServiceError):
                await c.embed_texts(["x"])
        return ok_calls, len(calls)

    assert asyncio.run(run()) == (2, 2)
