"""ONNX export of export directories, the onnxruntime Encoder, and the service's runtime option.

References are computed independently of the code under test where it matters: the
graphs are also run with a bare onnxruntime session on pixels normalised here with numpy,
hashes are recomputed with hashlib.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.datasets import load_sample_images

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from contrastkit.training.bench.onnx import TowersEncoder, bench_onnx, time_cell
from contrastkit.training.encoders import load_encoder
from contrastkit.training.encoders.exported import onnx_runtime as ortm
from contrastkit.training.encoders.exported.format import ExportError
from contrastkit.training.encoders.exported.onnx_runtime import (
    OnnxEncoder,
    open_graphs,
    read_manifest,
)
from contrastkit.training.encoders.nets.backbones import BackboneSpec, build_backbone
from contrastkit.training.export.onnx import (
    OnnxParityError,
    check_parity,
    export_graphs,
    export_onnx,
)
from tests.helpers import (
    FakeEncoder,
    image_bytes,
    wait_ready,
    write_tiny_clip_export,
    write_tiny_timm_export,
)

ort = pytest.importorskip("onnxruntime")  # the `onnx` extra
pytest.importorskip("onnxscript")  # torch's ONNX exporter needs it
ATOL = 1e-4


@pytest.fixture(scope="module")
def timm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = write_tiny_timm_export(tmp_path_factory.mktemp("onnx") / "timm")
    export_onnx(out)
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = write_tiny_clip_export(tmp_path_factory.mktemp("onnx") / "clip")
    export_onnx(out)
    return out


@functools.cache
def _sample_photos() -> tuple[Image.Image, ...]:
    return tuple(Image.fromarray(a) for a in load_sample_images().images)


def photos(n_noise: int = 3) -> list[Image.Image]:
    """Two real photos (scikit-learn's china.jpg and flower.jpg) and n_noise noise images."""
    rng = np.random.default_rng(1)
    noise = [
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(n_noise)
    ]
    return [*_sample_photos(), *noise]


def test_image_only_export_writes_hashed_graph_and_manifest(timm_dir: Path) -> None:
    names = sorted(p.name for p in timm_dir.iterdir())
    assert names == ["encoder.json", "image.onnx", "onnx.json", "weights.safetensors"]
    m = json.loads((timm_dir / "onnx.json").read_text())
    assert (
        m["graphs"]["image"]["sha256"]
        == hashlib.sha256((timm_dir / "image.onnx").read_bytes()).hexdigest()
    )
    assert "text" not in m["graphs"] and m["graphs"]["image"]["max_abs_diff"] <= ATOL
    meta = json.loads((timm_dir / "encoder.json").read_text())
    assert m["weights_sha256"] == meta["weights_sha256"]
    assert m["model_id"] == load_encoder(str(timm_dir), device="cpu").model_id


def test_image_graph_alone_equals_torch(timm_dir: Path) -> None:
    """A bare onnxruntime session on numpy-normalised pixels, any batch size, gives the torch
    encoder's unit embeddings."""
    enc = load_encoder(str(timm_dir), device="cpu")
    pre = enc.info.preprocess
    sess = ort.InferenceSession(str(timm_dir / "image.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 2, 7):
        pixels = torch.stack([enc.preprocess_image(im) for im in photos(5)[:n]])
        x = (pixels.numpy() / 255.0 - np.array(pre.mean)[:, None, None]) / np.array(pre.std)[
            :, None, None
        ]
        (out,) = sess.run(["image_embeds"], {"pixel_values": x.astype(np.float32)})
        want = enc.encode_image_tensors(pixels).numpy()
        assert out.shape == want.shape and np.abs(out - want).max() <= ATOL
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_onnx_encoder_equals_torch_encoder_image_only(timm_dir: Path) -> None:
    torch_enc = load_encoder(str(timm_dir), device="cpu")
    onnx_enc = load_encoder(str(timm_dir), device="cpu", runtime="onnx")
    assert isinstance(onnx_enc, OnnxEncoder) and onnx_enc.info == torch_enc.info
    images = photos(18)  # 20 images: past the 16-image CPU chunk
    diff = (onnx_enc.encode_images(images) - torch_enc.encode_images(images)).abs().max()
    assert float(diff) <= ATOL


def test_clip_export_has_both_towers_equal_to_torch(clip_dir: Path) -> None:
    m = read_manifest(clip_dir)
    assert set(m.graphs) == {"image", "text"}
    assert m.graphs["text"].tokenizer == {"kind": "open_clip", "context_length": 16}
    torch_enc = load_encoder(str(clip_dir), device="cpu")
    onnx_enc = load_encoder(str(clip_dir), device="cpu", runtime="onnx")
    texts = ["a photo of a cat", "", "two dogs " * 40, "ünïcödé ✓"]
    for batch in (texts, texts[:1]):
        t_diff = (onnx_enc.encode_texts(batch) - torch_enc.encode_texts(batch)).abs().max()
        assert float(t_diff) <= ATOL
    i_diff = (onnx_enc.encode_images(photos()) - torch_enc.encode_images(photos())).abs().max()
    assert float(i_diff) <= ATOL
    assert onnx_enc.logit_scale == torch_enc.logit_scale and onnx_enc.model_id == torch_enc.model_id


def test_text_graph_alone_takes_open_clip_tokens(clip_dir: Path) -> None:
    import open_clip

    enc = load_encoder(str(clip_dir), device="cpu")
    sess = ort.InferenceSession(str(clip_dir / "text.onnx"), providers=["CPUExecutionProvider"])
    texts = ["a red car", "a photo of a dog on the beach"]
    ids = open_clip.SimpleTokenizer(context_length=16)(texts).numpy()
    (out,) = sess.run(None, {"input_ids": ids})
    assert np.abs(out - enc.encode_texts(texts).numpy()).max() <= ATOL


def test_service_runtime_onnx_embeds_as_torch(timm_dir: Path, tmp_path: Path) -> None:
    blobs = [image_bytes(im) for im in photos(2)]
    want = load_encoder(str(timm_dir), device="cpu").encode_images(
        [Image.open(io.BytesIO(b)) for b in blobs]
    )
    settings = Settings(
        model=str(timm_dir), runtime="onnx", device="cpu", collections_dir=str(tmp_path)
    )
    app = create_app(settings)
    with TestClient(app) as client:
        wait_ready(client, timeout=60)
        assert isinstance(app.state.service.models.default.require().encoder, OnnxEncoder)
        files = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
        r = client.post("/v1/embed/image", files=files)
        assert r.status_code == 200, r.text
        got = np.array(r.json()["embeddings"])
    assert got.shape == tuple(want.shape) and np.abs(got - want.numpy()).max() <= ATOL


def test_service_runtime_onnx_without_graphs_fails_clearly(tmp_path: Path) -> None:
    plain = write_tiny_timm_export(tmp_path / "plain")
    settings = Settings(
        model=str(plain), runtime="onnx", device="cpu", collections_dir=str(tmp_path / "c")
    )
    with TestClient(create_app(settings)) as client:
        for _ in range(600):
            if client.get("/readyz").json()["status"] != "loading":
                break
            time.sleep(0.05)
        r = client.get("/readyz")
        assert r.status_code == 503 and "no ONNX files" in r.json()["reason"]


def test_runtime_choice(timm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = write_tiny_timm_export(tmp_path / "plain")
    with pytest.raises(ExportError, match=r"no ONNX files.*runtime=torch"):
        load_encoder(str(plain), device="cpu", runtime="onnx")
    assert not isinstance(load_encoder(str(plain), device="cpu", runtime="auto"), OnnxEncoder)
    assert isinstance(load_encoder(str(timm_dir), device="cpu", runtime="auto"), OnnxEncoder)
    monkeypatch.setattr(ortm, "ONNX_FASTER_ON_CPU", False)
    assert not isinstance(load_encoder(str(timm_dir), device="cpu", runtime="auto"), OnnxEncoder)
    with pytest.raises(ValueError, match="export directory"):
        load_encoder("builtin", runtime="onnx")
    with pytest.raises(ValueError, match="on the CPU"):
        load_encoder(str(timm_dir), device="cuda:0", runtime="onnx")
    with pytest.raises(ValueError, match="runtime must be"):
        load_encoder(str(timm_dir), device="cpu", runtime="tensorrt")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit(folder: Path, change: Callable[[dict], object]) -> None:  # type: ignore[type-arg]
    m = json.loads((folder / "onnx.json").read_text())
    change(m)
    (folder / "onnx.json").write_text(json.dumps(m))


def test_tampered_or_stale_graphs_are_refused(
    timm_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    d = _copy(timm_dir, tmp_path / "tampered")
    data = bytearray((d / "image.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (d / "image.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="changed or replaced"):
        load_encoder(str(d), runtime="onnx")

    d = _copy(timm_dir, tmp_path / "stale")
    edit(d, lambda m: m.update(weights_sha256="0" * 64))
    with pytest.raises(ExportError, match="other weights"):
        load_encoder(str(d), runtime="onnx")
    d = _copy(timm_dir, tmp_path / "escape")
    edit(d, lambda m: m["graphs"]["image"].update(file="../image.onnx"))
    with pytest.raises(ExportError, match="plain file name"):
        load_encoder(str(d), runtime="onnx")
    d = _copy(clip_dir, tmp_path / "notext")
    edit(d, lambda m: m["graphs"].pop("text"))
    with pytest.raises(ExportError, match=r"no ONNX graph for \['text'\]"):
        load_encoder(str(d), runtime="onnx")


class Shifted(FakeEncoder):
    """FakeEncoder plus a constant offset: a stand-in for a graph that drifted from torch."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = super()._image_forward(pixels)
        return out / out.norm(dim=-1, keepdim=True) + self.shift

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        out = super()._text_forward(texts)
        return out / out.norm(dim=-1, keepdim=True) + self.shift


def test_parity_check_passes_within_and_fails_past_tolerance() -> None:
    diffs = check_parity(Shifted(0.0), Shifted(1e-6))
    assert set(diffs) == {"image", "text"} and 0 < diffs["image"] <= ATOL
    with pytest.raises(OnnxParityError, match="disagree"):
        check_parity(Shifted(0.0), Shifted(1e-2))


def test_failed_parity_keeps_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net, dim = build_backbone(BackboneSpec("tiny"))
    enc = TowersEncoder(net, 16, None, dim)

    def refuse(*_: object) -> None:
        raise OnnxParityError("forced")

    monkeypatch.setattr("contrastkit.training.export.onnx.check_parity", refuse)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(OnnxParityError):
        export_graphs(enc, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.slow
@pytest.mark.parametrize("tower", ["transformer", "minilm"])
def test_training_text_towers_export(tower: str, tmp_path: Path) -> None:
    """A trained CLIP's text tower (open_clip transformer, or MiniLM) exports and matches."""
    from contrastkit.training.encoders.nets.text_towers import build_text_tower

    torch.manual_seed(0)
    net, dim = build_backbone(BackboneSpec("tiny"))
    text = build_text_tower(tower, dim, lock=False, width=32, layers=1, heads=2, context_length=12)
    export_graphs(TowersEncoder(net, 16, text, dim), tmp_path)  # raises unless within 1e-4
    m = read_manifest(tmp_path)
    assert m.graphs["text"].max_abs_diff <= ATOL
    kind = m.graphs["text"].tokenizer
    assert kind == (
        {"kind": "open_clip", "context_length": 12}
        if tower == "transformer"
        else {"kind": "minilm", "max_length": 256}
    )
    onnx_enc = open_graphs(tmp_path, m)
    torch_enc = TowersEncoder(net, 16, text, dim)
    texts = ["a photo of a dog", "x " * 300]
    assert float((onnx_enc.encode_texts(texts) - torch_enc.encode_texts(texts)).abs().max()) <= ATOL


def test_time_cell_interleaves_and_alternates_order() -> None:
    calls: list[str] = []

    def fn(name: str) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            calls.append(name)
            return torch.zeros(1)

        return call

    times = time_cell({k: fn(k) for k in ("a", "b")}, rounds=4, warmup=1, budget_s=60)
    warm = ["a", "b"]
    assert calls == [*warm, "a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(v) for v in times.values()] == [4, 4]


def test_bench_on_an_export_dir(timm_dir: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-thread OpenMP team stalls on a CPU shared with other tests
    try:
        result = bench_onnx(
            [str(timm_dir)], batch_sizes=(1, 3), rounds=3, warmup=0, say=lambda _: None
        )
    finally:
        torch.set_num_threads(threads)
    rows = result["rows"]
    assert [(r["input"], r["batch"]) for r in rows] == [("image", 1), ("image", 3)]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["torch_ms"] / r["onnx_ms"])
        assert r["onnx_per_s"] == pytest.approx(r["batch"] * 1000 / r["onnx_ms"])
        assert r["max_abs_diff"] <= ATOL and r["rounds"] == 3
    assert result["environment"]["onnxruntime"] == ort.__version__
