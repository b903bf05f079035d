"""`contrastive bench serve` runs end to end (tiny model, short levels) and writes its JSON;
with --peer, against a stub OpenAI-style peer."""

from __future__ import annotations

import base64
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

from contrastkit.service.bench import peer
from contrastkit.service.cli import main
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
    """A tiny OpenAI-style embeddings server on loopback -> (its API base, request bodies).
    It answers `model` for texts and `model + '-image'` for images (modality 'image'), and
    refuses the second request of 32 items on each connection with 503, as a shedding
    server would (the first is answered: every connection of a run gets an answer)."""
    seen: list[Any] = []
    big: dict[Any, int] = {}  # connection (client address) -> its requests of 32 items

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def embeddings(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body)
        want = model + "-image" if body.get("modality") == "image" else model
        if body.get("model") != want:
            return JSONResponse({"error": "unknown model"}, status_code=400)
        if len(body["input"]) == 32:
            big[request.client] = big.get(request.client, 0) + 1
            if big[request.client] == 2:
                return JSONResponse({"error": "overloaded"}, status_code=503)
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
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the stub peer did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.should_exit = True
        thread.join(10)


JPEG = b"\xff\xd8 not really a jpeg"


def test_compare_against_stub_peer() -> None:
    models = {"text": "stub/minilm", "image": "stub/minilm-image"}
    work = [peer.Workload("text", 1), peer.Workload("image", 32)]
    with _stub_peer() as (url, seen):
        assert peer.peer_model(url) == "stub/minilm"
        ep = peer.Endpoint.from_url(url + "/", models)
        assert (ep.host, ep.prefix, ep.url) == ("127.0.0.1", "", url)
        assert ep.check(work[0], JPEG) == 384
        assert seen[-1] == {"model": "stub/minilm", "input": [peer.TEXT]}
        cells = peer.compare(ep, ep, work, [1, 3], seconds=0.2, rounds=2, jpeg=JPEG, warmup=0)
    assert [(c["workload"], c["concurrency"]) for c in cells] == [
        ("text x1", 1),
        ("text x1", 3),
        ("image x32", 1),
        ("image x32", 3),
    ]
    for cell in cells:
        assert [r["first"] for r in cell["rounds"]] == ["ours", "peer"]  # alternated
        for r in cell["rounds"]:
            for side in ("ours", "peer"):
                assert r[side]["answered_per_s"] > 0 and r[side]["other_errors"] == {}
                assert r[side]["p50_ms"] <= r[side]["p99_ms"]
        s = cell["summary"]
        assert s["ratio_min"] == min(s["ratios"])
        assert s["ratios"] == [
            r["ours"]["answered_per_s"] / r["peer"]["answered_per_s"] for r in cell["rounds"]
        ]
        refused = sum(r["ours"]["refused_503"] + r["peer"]["refused_503"] for r in cell["rounds"])
        assert (refused > 0) == cell["workload"].endswith("x32"), cell  # 503s are counted
    # The load sent what check() sent: the texts, or data: URLs of the JPEG with 'image'.
    uri = "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
    images = [b for b in seen if b.get("modality") == "image"]
    assert images and all(b["input"] == [uri] * 32 for b in images)
    assert all(b["model"] == "stub/minilm-image" for b in images)
    with pytest.raises(ValueError, match="http://"):
        peer.Endpoint.from_url("https://example.com/v1", models)


@pytest.mark.slow
def test_bench_serve_peer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--peer: our server (tiny model) and a stub peer, side by side, in one run."""
    model = write_tiny_clip_export(tmp_path / "clip")
    out = tmp_path / "results"
    with _stub_peer(dim=32) as (url, seen):
        argv = ["bench", "serve", "--model", str(model), "--device", "cpu", "--seconds", "0.3"]
        argv += ["--concurrency", "1,4", "--batch", "4", "--out", str(out), "--peer", url]
        argv += ["--rounds", "2", "--peer-image-model", "stub/minilm-image"]
        assert main(argv) == 0
    assert seen, "the peer got no requests"
    (result_file,) = out.glob("serve-peer-*.json")
    result = json.loads(result_file.read_text())
    assert result["peer"] == {
        "url": url,
        "models": {"text": "stub/minilm", "image": "stub/minilm-image"},
    }
    assert result["dims"]["image x32"] == {"ours": 32, "peer": 32}
    grid = [(c["workload"], c["concurrency"]) for c in result["cells"]]
    assert grid == [(f"{m} x{n}", c) for m in ("text", "image") for n in (1, 32) for c in (1, 4)]
    for cell in result["cells"]:
        assert len(cell["rounds"]) == 2
        for r in cell["rounds"]:
            assert r["ours"]["answered_per_s"] > 0 and r["ours"]["other_errors"] == {}
            assert r["ours"]["refused_503"] == 0  # closed loop at c <= 4: queued, answered
            assert r["peer"]["answered_per_s"] > 0
    assert "ours / peer (median, min)" in capsys.readouterr().out
