"""`contrastive bench serve` runs end to end (tiny model, short levels) and writes its JSON;
with --peer, against a stub OpenAI-style peer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.bench import serve
from service.cli import main
from tests.helpers import free_port, write_tiny_clip_export


@pytest.mark.slow
def test_bench_serve_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_tiny_clip_export(tmp_path / "clip")
    out = tmp_path / "results"
    argv = [
        "bench",
        "serve",
        "--model",
        str(model),
        "--device",
        "cpu",
        "--seconds",
        "0.5",
        "--concurrency",
        "1,4",
        "--batch",
        "4",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    (result_file,) = out.glob("serve-*.json")
    result = json.loads(result_file.read_text())
    assert result["device"] == "cpu" and result["torch"]
    assert [(r["modality"], r["concurrency"]) for r in result["http"]] == [
        ("image", 1),
        ("image", 4),
        ("text", 1),
        ("text", 4),
    ]
    decode = result["decode_only"]  # the decode-only row, both paths on the CPU here
    assert decode["device"] == "cpu" and decode["batch"] == 4
    assert decode["cpu_images_per_s"] > 0 and decode["device_images_per_s"] > 0
    for row in result["http"]:
        assert row["requests_per_s"] > 0 and row["errors"] == {}
        assert row["ratio_http_to_in_process"] == pytest.approx(
            row["requests_per_s"] / row["in_process_items_per_s"]
        )
    assert "HTTP / in-process" in capsys.readouterr().out


@contextmanager
def _stub_peer(model: str = "stub/minilm", dim: int = 384) -> Iterator[tuple[str, list[Any]]]:
    """A tiny OpenAI-style embeddings server on loopback -> (its API base, request bodies)."""
    seen: list[Any] = []

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def embeddings(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body)
        if body.get("model") != model:
            return JSONResponse({"error": "unknown model"}, status_code=400)
        data = [
            {"object": "embedding", "index": i, "embedding": [0.0] * dim}
            for i, _ in enumerate(body["input"])
        ]
        return JSONResponse({"object": "list", "data": data, "model": model})

    app = Starlette(
        routes=[Route("/models", models), Route("/embeddings", embeddings, methods=["POST"])]
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the stub peer did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.should_exit = True
        thread.join(10)


def test_compare_against_stub_peer() -> None:
    with _stub_peer() as (url, seen):
        assert serve.peer_model(url) == "stub/minilm"
        peer = serve.Endpoint.from_url(url + "/", "stub/minilm")
        assert (peer.host, peer.prefix, peer.url) == ("127.0.0.1", "", url)
        assert peer.check() == 384
        assert seen[-1] == {"model": "stub/minilm", "input": [serve.TEXT]}
        rows = serve.compare(peer, peer, [1, 3], seconds=0.2)
    assert [r["concurrency"] for r in rows] == [1, 3]
    for r in rows:
        for side in ("ours", "peer"):
            assert r[side]["requests_per_s"] > 0 and r[side]["errors"] == {}
            assert r[side]["p50_ms"] <= r[side]["p95_ms"]
        assert r["ratio_rps_ours_to_peer"] == pytest.approx(
            r["ours"]["requests_per_s"] / r["peer"]["requests_per_s"]
        )
    # The load sent exactly what check() sent: one text, the peer's model name.
    assert all(body == {"model": "stub/minilm", "input": [serve.TEXT]} for body in seen)
    with pytest.raises(ValueError, match="http://"):
        serve.Endpoint.from_url("https://example.com/v1", "m")


@pytest.mark.slow
def test_bench_serve_peer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--peer: our server (tiny model) and a stub peer, side by side, in one run."""
    model = write_tiny_clip_export(tmp_path / "clip")
    out = tmp_path / "results"
    with _stub_peer(dim=32) as (url, seen):
        argv = ["bench", "serve", "--model", str(model), "--device", "cpu", "--seconds", "0.3"]
        argv += ["--concurrency", "1,4", "--batch", "4", "--out", str(out), "--peer", url]
        assert main(argv) == 0
    assert seen, "the peer got no requests"
    (result_file,) = out.glob("serve-peer-*.json")
    result = json.loads(result_file.read_text())
    assert result["peer"] == {"url": url, "model": "stub/minilm"}
    assert [r["concurrency"] for r in result["http"]] == [1, 4]
    for r in result["http"]:
        assert r["ours"]["requests_per_s"] > 0 and r["ours"]["errors"] == {}
        assert r["peer"]["requests_per_s"] > 0 and r["peer"]["errors"] == {}
    assert "ours / peer" in capsys.readouterr().out
