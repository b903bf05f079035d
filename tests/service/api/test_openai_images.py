"""Images on POST /v1/embeddings: strings with "modality": "image", or input objects, mixed
with texts; the same vectors as /v1/embed/image and /v1/embed/text, in input order."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.helpers import image_bytes

Make = Callable[..., TestClient]
URL = "/v1/embeddings"


@pytest.fixture
def client(fake_app_factory: Make) -> TestClient:
    return fake_app_factory()


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return image_bytes(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))


def _data_url(blob: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(blob).decode()


def _vectors(r: Any) -> np.ndarray:
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    return np.asarray([d["embedding"] for d in body["data"]], np.float32)


def _image_refs(client: TestClient, blobs: list[bytes]) -> np.ndarray:
    r = client.post(
        "/v1/embed/image", json={"images": [base64.b64encode(b).decode() for b in blobs]}
    )
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"], np.float32)


def _text_refs(client: TestClient, texts: list[str]) -> np.ndarray:
    r = client.post("/v1/embed/text", json={"texts": texts})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"], np.float32)


def test_strings_with_modality_image(client: TestClient) -> None:
    blobs = [_png(1), _png(2)]
    plain = base64.b64encode(blobs[1]).decode()
    r = client.post(
        URL, json={"model": "fake:test", "modality": "image", "input": [_data_url(blobs[0]), plain]}
    )
    np.testing.assert_allclose(_vectors(r), _image_refs(client, blobs), atol=1e-6)
    assert r.json()["usage"]["prompt_tokens"] == 0


def test_mixed_input_objects_keep_their_order(client: TestClient) -> None:
    blobs = [_png(3), _png(4)]
    inputs = [{"text": "a red cat"}, {"image": _data_url(blobs[0])}, "a blue dog",
              {"image": _data_url(blobs[1])}]  # fmt: skip
    got = _vectors(client.post(URL, json={"model": "fake:test", "input": inputs}))
    images, texts = _image_refs(client, blobs), _text_refs(client, ["a red cat", "a blue dog"])
    np.testing.assert_allclose(got, np.stack([texts[0], images[0], texts[1], images[1]]), atol=1e-6)


def test_base64_encoding_of_image_vectors(client: TestClient) -> None:
    body = {"model": "fake:test", "modality": "image", "input": _data_url(_png(5)),
            "encoding_format": "base64"}  # fmt: skip
    r = client.post(URL, json=body)
    assert r.status_code == 200, r.text
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(vec, _image_refs(client, [_png(5)])[0], atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"modality": "image", "input": ["https://example.com/cat.jpg"]}, 422, "url_not_supported"),
        ({"input": [{"image": "http://example.com/x.png"}]}, 422, "url_not_supported"),
        ({"modality": "image", "input": ["not base64!"]}, 422, "invalid_base64"),
        ({"modality": "image", "input": [base64.b64encode(b"GIF89a junk").decode()]}, 422,
         "image_decode_failed"),
        ({"input": [{"text": "a", "image": "b"}]}, 422, "invalid_request"),
        ({"input": [{}]}, 422, "invalid_request"),
        ({"input": [{"video": "x"}]}, 422, "invalid_request"),
        ({"modality": "audio", "input": ["x"]}, 422, "invalid_request"),
        ({"input": []}, 422, "empty_input"),
        ({"input": [{"text": "  "}]}, 422, "invalid_request"),
    ],
)  # fmt: skip
def test_bad_image_inputs_are_4xx(
    client: TestClient, body: dict[str, Any], status: int, code: str
) -> None:
    r = client.post(URL, json={"model": "fake:test", **body})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_too_many_images_is_refused_before_decoding(fake_app_factory: Make) -> None:
    from contrastkit.service.settings import Settings

    client = fake_app_factory(Settings(max_images=2))
    inputs = [_data_url(_png(i)) for i in range(3)]
    r = client.post(URL, json={"model": "fake:test", "modality": "image", "input": inputs})
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_items"
