"""Limits, auth, readiness, batching and back-pressure, on a tiny deterministic encoder."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from contrastkit.service.app import create_app
from contrastkit.service.runtime.batcher import Batcher, QueueFullError
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, wait_ready, wait_until

Factory = Callable[..., TestClient]


def test_body_over_limit_by_content_length(fake_app_factory: Factory) -> None:
    client = fake_app_factory(Settings(max_body_bytes=4096))
    r = client.post("/v1/embed/text", json={"texts": ["x" * 10_000]})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert client.post("/v1/embed/text", json={"texts": ["small"]}).status_code == 200


def test_streamed_body_refused_before_it_is_read() -> None:
    """Without Content-Length, the app stops reading once the running count passes the limit."""
    app = create_app(Settings(max_body_bytes=5000), encoder=FakeEncoder())
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": pulled < 1000}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/embed/text",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "root_path": "",
        "app": app,
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert pulled <= 6  # about 6 KB read of a 1 MB body


def test_api_keys(fake_app_factory: Factory) -> None:
    client = fake_app_factory(Settings(api_keys=["key-one", "key-two"]))
    body = {"texts": ["hi"]}
    assert client.post("/v1/embed/text", json=body).status_code == 401
    r = client.post("/v1/embed/text", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    for key in ("key-one", "key-two"):
        ok = client.post("/v1/embed/text", json=body, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/v1/models").status_code == 401


def test_docs_are_open_with_keys_and_declare_the_bearer_scheme(fake_app_factory: Factory) -> None:
    client = fake_app_factory(Settings(api_keys=["key-one"]))
    docs = client.get("/docs")
    assert docs.status_code == 200
    # the page's own assets load without a key too
    asset = re.search(r'src="(/static-offline-docs/[^"]+)"', docs.text)
    assert asset is not None and client.get(asset.group(1)).status_code == 200
    assert client.get("/redoc").status_code == 200
    assert client.get("/docs/oauth2-redirect").status_code == 200
    r = client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    scheme = spec["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    embed = spec["paths"]["/v1/embed/text"]["post"]
    assert embed["security"] == [{"bearer": []}] and "401" in embed["responses"]
    for probe in ("/healthz", "/readyz"):  # the web page "/" is not in the document
        assert "security" not in spec["paths"][probe]["get"], probe
    # the docs show the schema only: the API itself still needs the key
    assert client.post("/v1/embed/text", json={"texts": ["hi"]}).status_code == 401
    headers = {"Authorization": "Bearer key-one"}
    r = client.post("/v1/embed/text", json={"texts": ["hi"]}, headers=headers)
    assert r.status_code == 200


def test_without_keys_the_bearer_scheme_is_declared_optional(fake_app_factory: Factory) -> None:
    spec = fake_app_factory(Settings()).get("/openapi.json").json()
    assert "bearer" in spec["components"]["securitySchemes"]
    embed = spec["paths"]["/v1/embed/text"]["post"]
    assert embed["security"] == [{"bearer": []}, {}] and "401" not in embed["responses"]


def test_api_keys_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTRASTIVE_API_KEYS", "a, b")
    monkeypatch.setenv("CONTRASTIVE_MAX_BATCH_SIZE", "7")
    s = Settings()
    assert s.api_keys == ["a", "b"] and s.max_batch_size == 7


def test_readyz_503_until_loaded_then_200(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow_load(*_: Any) -> FakeEncoder:
        release.wait(30)
        return FakeEncoder()

    monkeypatch.setattr("contrastkit.service.runtime.served.load_encoder", slow_load)
    with TestClient(create_app(Settings(model="anything"))) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = client.post("/v1/embed/text", json={"texts": ["hi"]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        assert client.get("/healthz").status_code == 200
        release.set()
        wait_ready(client)
        assert client.post("/v1/embed/text", json={"texts": ["hi"]}).status_code == 200


def test_model_load_is_logged_and_readyz_says_for_how_long(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    def slow_load(*_: Any) -> FakeEncoder:
        release.wait(30)
        return FakeEncoder()

    monkeypatch.setattr("contrastkit.service.runtime.served.load_encoder", slow_load)
    monkeypatch.setattr("contrastkit.service.runtime.served.PROGRESS_EVERY_S", 0.05)
    caplog.set_level(logging.INFO, logger="contrastive.service")
    progress = re.compile(r"loading model anything \(\d+ s\)…")

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "contrastive.service"]

    with TestClient(create_app(Settings(model="anything", device="cpu"))) as client:
        # the load is held: wait for its first progress line, however late it comes
        wait_until(lambda: any(progress.fullmatch(m) for m in messages()), what="progress")
        body = client.get("/readyz").json()
        assert body["status"] == "loading"
        assert re.fullmatch(r"loading model anything \(\d+ s\)", body["reason"]), body
        assert body["loading_seconds"] >= 0.05  # a progress line comes after 0.05 s
        r = client.post("/v1/embed/text", json={"texts": ["hi"]})
        assert r.json()["error"]["message"].startswith("loading model anything (")
        release.set()
        wait_ready(client)
        assert "loading_seconds" not in client.get("/readyz").json()
    assert messages()[0] == "loading model anything on cpu…"
    assert any(progress.fullmatch(m) for m in messages())
    assert any(re.fullmatch(r"model anything loaded in \d+\.\d s", m) for m in messages())


def test_readyz_reports_a_failed_load() -> None:
    with TestClient(create_app(Settings(model="open_clip:no-such-arch"))) as client:
        wait_until(lambda: client.get("/readyz").json()["status"] != "loading", 120, "the load")
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "no-such-arch" in r.json()["reason"]


class SlowEncoder(FakeEncoder):
    """Sleeps in every forward, so concurrent requests pile up into batches."""

    def __init__(self, delay: float = 0.05, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.gate = gate

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        if self.gate is not None:
            self.gate.wait(60)
        time.sleep(self.delay)
        return super()._text_forward(texts)


def _text_batcher(client: TestClient) -> Batcher[Any]:
    """The default model's text batcher (to know when requests are queued)."""
    state = client.app.state.service  # type: ignore[attr-defined]
    batcher: Batcher[Any] = state.models.default.require().texts.batcher
    return batcher


def test_concurrent_requests_are_batched_and_routed(fake_app_factory: Factory) -> None:
    """24 one-text requests, the model held until all are queued: they go in batches of
    at most 16, and each caller gets its own row."""
    enc = SlowEncoder(delay=0.0)
    client = fake_app_factory(Settings(max_batch_size=16, max_wait_ms=20), encoder=enc)
    gate = enc.gate = threading.Event()  # armed after warm-up
    enc.calls.clear()
    texts = [f"text number {i}" for i in range(24)]
    queued = _text_batcher(client)
    with ThreadPoolExecutor(24) as pool:
        sent = [pool.submit(client.post, "/v1/embed/text", json={"texts": [t]}) for t in texts]
        wait_until(lambda: queued.pending == 24, what="24 requests queued")
        gate.set()
        replies = [f.result() for f in sent]
    expected = FakeEncoder().encode_texts(texts).numpy()
    got = np.array([r.json()["embeddings"][0] for r in replies])
    np.testing.assert_allclose(got, expected, atol=1e-6)  # each caller got its own row
    assert max(enc.calls) > 1 and len(enc.calls) < len(texts)
    assert max(enc.calls) <= 16


def test_full_queue_answers_503_with_retry_after(fake_app_factory: Factory) -> None:
    enc = SlowEncoder(delay=0.0)
    client = fake_app_factory(Settings(max_batch_size=2, max_queue=4, max_wait_ms=0), encoder=enc)
    gate = enc.gate = threading.Event()  # armed after warm-up
    with ThreadPoolExecutor(8) as pool:
        busy = [
            pool.submit(client.post, "/v1/embed/text", json={"texts": ["a", "b"]}) for _ in range(2)
        ]
        # the queue holds 4 items, and the model is stuck on the first 2
        wait_until(lambda: _text_batcher(client).pending == 4, what="4 items queued")
        r = client.post("/v1/embed/text", json={"texts": ["c"]})
        gate.set()
        assert all(f.result().status_code == 200 for f in busy)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] == "1"
    assert client.post("/v1/embed/text", json={"texts": ["d"]}).status_code == 200


def test_batcher_splits_oversize_jobs_and_refuses_when_full() -> None:
    seen: list[int] = []

    def fn(items: list[int]) -> torch.Tensor:
        seen.append(len(items))
        return torch.tensor(items, dtype=torch.float32)[:, None]

    async def main() -> None:
        pool = ThreadPoolExecutor(1)
        b: Batcher[int] = Batcher(fn, pool, max_batch=4, max_wait_ms=1, max_queue=10)
        b.start()
        out = await b.submit(list(range(10)))
        assert out[:, 0].tolist() == list(range(10))
        assert seen == [4, 4, 2]
        b.pending = 9  # as if 9 items were waiting
        with pytest.raises(QueueFullError):
            await b.submit([1, 2])
        b.pending = 0
        await b.stop()
        pool.shutdown()

    asyncio.run(main())


def test_metrics_include_process_gc_and_platform_collectors(fake_app_factory: Factory) -> None:
    text = fake_app_factory().get("/metrics").text
    assert "python_gc_objects_collected_total" in text
    assert "python_info" in text
    if sys.platform.startswith("linux"):  # ProcessCollector reads /proc
        assert "process_resident_memory_bytes" in text
        assert "process_cpu_seconds_total" in text
