"""runtime=auto on the CPU: a torch model moves to onnxruntime, through a cache of traced graphs.

The reference for every vector is the torch encoder the graphs were traced from."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from contrastkit.service.app import create_app
from contrastkit.service.runtime.onnx_upgrade import wants_onnx
from contrastkit.service.settings import Settings
from contrastkit.training.encoders import load_encoder
from contrastkit.training.encoders.exported.onnx_runtime import OnnxEncoder
from contrastkit.training.export import onnx as export_mod
from contrastkit.training.export import onnx_cache
from tests.helpers import FakeEncoder, wait_ready, write_tiny_clip_export

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
ATOL = 1e-4
TEXTS = ["a photo of a cat", "two dogs playing in the snow"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny open_clip export directory without ONNX files: torch only."""
    return write_tiny_clip_export(tmp_path_factory.mktemp("upgrade") / "clip")


def _count_traces(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    traced: list[Path] = []
    real = export_mod.export_graphs

    def counting(encoder, folder, *args, **kwargs):  # type: ignore[no-untyped-def]
        traced.append(folder)
        return real(encoder, folder, *args, **kwargs)

    monkeypatch.setattr(export_mod, "export_graphs", counting)
    return traced


def test_traced_once_then_found_in_the_cache(
    clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traced = _count_traces(monkeypatch)
    torch_enc = load_encoder(str(clip_dir), device="cpu", runtime="torch")
    first = onnx_cache.cached_onnx(torch_enc, tmp_path)
    again = onnx_cache.cached_onnx(
        load_encoder(str(clip_dir), device="cpu", runtime="torch"), tmp_path
    )
    assert len(traced) == 1  # the second encoder has the same weights: a cache hit
    assert isinstance(first, OnnxEncoder) and isinstance(again, OnnxEncoder)
    want = torch_enc.encode_texts(TEXTS).numpy()
    assert np.abs(again.encode_texts(TEXTS).numpy() - want).max() <= ATOL
    folders = [p.name for p in tmp_path.iterdir()]
    assert len(folders) == 1 and not folders[0].startswith(".")  # no temporary left


def test_weights_key_follows_the_weights(clip_dir: Path) -> None:
    a = load_encoder(str(clip_dir), device="cpu", runtime="torch")
    b = load_encoder(str(clip_dir), device="cpu", runtime="torch")
    assert onnx_cache.weights_key(a) == onnx_cache.weights_key(b)
    with torch.no_grad():
        next(iter(b.model.parameters())).view(-1)[0] += 1e-3  # type: ignore[attr-defined]
    assert onnx_cache.weights_key(a) != onnx_cache.weights_key(b)


def test_a_damaged_cached_graph_is_set_aside_and_traced_again(
    clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = load_encoder(str(clip_dir), device="cpu", runtime="torch")
    onnx_cache.cached_onnx(enc, tmp_path)
    (folder,) = list(tmp_path.iterdir())
    graph = folder / "image.onnx"
    raw = bytearray(graph.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    graph.write_bytes(bytes(raw))
    traced = _count_traces(monkeypatch)
    with pytest.warns(UserWarning, match="refused"):
        fresh = onnx_cache.cached_onnx(enc, tmp_path)
    assert len(traced) == 1
    assert (tmp_path / f"{folder.name}.damaged" / "image.onnx").read_bytes() == bytes(raw)
    pixels = torch.randn(2, 3, 32, 32)
    diff = fresh.encode_image_tensors(pixels) - enc.encode_image_tensors(pixels)
    assert float(diff.abs().max()) <= ATOL


def test_who_moves_to_onnx() -> None:
    enc = FakeEncoder()
    on = Settings(runtime="auto", auto_onnx=True)
    assert wants_onnx(enc, on, None)
    assert not wants_onnx(enc, on, "torch")  # the model's own runtime wins
    assert not wants_onnx(enc, Settings(runtime="torch", auto_onnx=True), None)
    assert not wants_onnx(enc, Settings(runtime="auto", auto_onnx=False), None)
    enc.runtime = "onnxruntime"  # type: ignore[attr-defined]
    assert not wants_onnx(enc, on, None)


def test_the_server_answers_on_torch_then_on_onnx_with_the_same_vectors(
    clip_dir: Path, tmp_path: Path
) -> None:
    want = load_encoder(str(clip_dir), device="cpu", runtime="torch").encode_texts(TEXTS)
    settings = Settings(
        model=str(clip_dir),
        device="cpu",
        runtime="auto",
        auto_onnx=True,
        onnx_cache_dir=str(tmp_path / "onnx"),
        collections_dir=str(tmp_path / "c"),
    )
    app = create_app(settings)
    with TestClient(app) as client:
        wait_ready(client, timeout=120)
        card = client.get("/v1/models").json()["data"][0]
        model_id = card["id"]
        deadline = time.monotonic() + 300  # tracing on a busy 2-core machine

        while not isinstance(app.state.service.models.default.require().encoder, OnnxEncoder):
            assert time.monotonic() < deadline, "the model never moved to onnxruntime"
            # answered on torch while the graphs are traced (from a copy of the model)
            r = client.post("/v1/embed/text", json={"texts": TEXTS})
            assert r.status_code == 200, r.text
            assert np.abs(np.array(r.json()["embeddings"]) - want.numpy()).max() <= ATOL

        r = client.post("/v1/embed/text", json={"texts": TEXTS})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == model_id  # same id, same collections
        assert client.get("/v1/models").json()["data"][0]["runtime"] == "onnxruntime"
        got = np.array(r.json()["embeddings"])
    assert np.abs(got - want.numpy()).max() <= ATOL
    assert any((tmp_path / "onnx").iterdir())  # kept for the next start
