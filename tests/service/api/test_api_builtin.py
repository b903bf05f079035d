"""Happy paths of every endpoint, against the real built-in model on real photos."""

from __future__ import annotations

import base64

import numpy as np
from fastapi.testclient import TestClient

LABELS = ["cat", "dog", "car", "airplane", "cup of coffee"]


def _classify(client: TestClient, *images: bytes, **extra: object) -> dict:
    files = [("files", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(images)]
    data = {"labels": LABELS, **extra}
    r = client.post("/v1/classify", files=files, data=data)
    assert r.status_code == 200, r.text
    return r.json()


def test_cat_photo_ranks_cat_first(builtin_client: TestClient, cat_jpeg: bytes) -> None:
    body = _classify(builtin_client, cat_jpeg)
    ranking = body["results"][0]["ranking"]
    assert ranking[0]["label"] == "cat"
    probs = [r["probability"] for r in ranking]
    assert probs == sorted(probs, reverse=True)
    assert abs(sum(probs) - 1.0) < 1e-4
    assert sorted(r["label"] for r in ranking) == sorted(LABELS)


def test_classify_json_with_templates_and_top_k(
    builtin_client: TestClient, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    payload = {
        "images": [base64.b64encode(cat_jpeg).decode(), base64.b64encode(coffee_jpeg).decode()],
        "labels": LABELS,
        "templates": ["a photo of a {}.", "a close-up photo of a {}."],
        "top_k": 2,
    }
    r = builtin_client.post("/v1/classify", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["templates"] == payload["templates"]
    assert [len(x["ranking"]) for x in body["results"]] == [2, 2]
    assert body["results"][0]["ranking"][0]["label"] == "cat"
    assert body["results"][1]["ranking"][0]["label"] == "cup of coffee"


def test_text_nearer_cat_than_coffee(
    builtin_client: TestClient, cat_jpeg: bytes, coffee_jpeg: bytes
) -> None:
    files = [
        ("files", ("cat.jpg", cat_jpeg, "image/jpeg")),
        ("files", ("c.jpg", coffee_jpeg, "image/jpeg")),
    ]
    images = np.array(builtin_client.post("/v1/embed/image", files=files).json()["embeddings"])
    r = builtin_client.post("/v1/embed/text", json={"texts": ["a photo of a cat"]})
    text = np.array(r.json()["embeddings"][0])
    cat_sim, coffee_sim = images @ text
    assert cat_sim > coffee_sim + 0.1


def test_embed_text_shape_and_norm(builtin_client: TestClient) -> None:
    r = builtin_client.post("/v1/embed/text", json={"texts": ["one", "two words", "three"]})
    assert r.status_code == 200
    body = r.json()
    emb = np.array(body["embeddings"])
    assert body["dim"] == 384 and emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert body["model"].startswith("builtin:")


def test_embed_image_json_equals_multipart(builtin_client: TestClient, cat_jpeg: bytes) -> None:
    a = builtin_client.post(
        "/v1/embed/image", files=[("files", ("cat.jpg", cat_jpeg, "image/jpeg"))]
    ).json()["embeddings"]
    data_url = "data:image/jpeg;base64," + base64.b64encode(cat_jpeg).decode()
    b = builtin_client.post("/v1/embed/image", json={"images": [data_url]}).json()["embeddings"]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_openai_embeddings_float_and_base64(builtin_client: TestClient) -> None:
    model = builtin_client.get("/v1/models").json()["data"][0]["id"]
    f = builtin_client.post("/v1/embeddings", json={"model": model, "input": ["hi there", "bye"]})
    assert f.status_code == 200, f.text
    body = f.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"]["total_tokens"] >= 3
    b = builtin_client.post(
        "/v1/embeddings", json={"model": "builtin", "input": "bye", "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(b["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, body["data"][1]["embedding"], atol=1e-6)


def test_models_health_ready_metrics(builtin_client: TestClient) -> None:
    card = builtin_client.get("/v1/models").json()["data"][0]
    assert card["dim"] == 384 and card["capabilities"] == ["image", "text"]
    assert card["preprocessing"]["size"] == 224 and card["logit_scale"] > 0
    assert builtin_client.get("/healthz").json() == {"status": "ok"}
    assert builtin_client.get("/readyz").json()["status"] == "ready"
    metrics = builtin_client.get("/metrics").text
    assert (
        'contrastive_requests_total{method="POST",route="/v1/embed/text",status="200"}' in metrics
    )
    assert "contrastive_batch_size_bucket" in metrics
    assert 'contrastive_queue_depth{modality="image"}' in metrics


def test_openapi_docs(builtin_client: TestClient) -> None:
    spec = builtin_client.get("/openapi.json").json()
    for path in ("/v1/embed/text", "/v1/embed/image", "/v1/classify", "/v1/embeddings"):
        assert path in spec["paths"]
    content = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert builtin_client.get("/docs").status_code == 200
