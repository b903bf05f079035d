"""From a training run to the service, for every method: train 2 steps on digits (CPU),
export, serve the export, and check that the REST API returns exactly what the trained
model computes (unit embeddings within 1e-5). The reference is the Method as the training
engine itself restores it from the checkpoint (Trainer(resume=...)), not the export code."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import skimage.data
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from contrastkit.training.augment import IMAGENET_MEAN, IMAGENET_STD
from contrastkit.training.cli import main as train_main
from contrastkit.training.commands import export as export_cli
from contrastkit.training.config import build_config
from contrastkit.training.data import load_knn_data
from contrastkit.training.encoders import load_encoder
from contrastkit.training.encoders.base import Preprocess
from contrastkit.training.encoders.exported.format import ExportError, read_meta
from contrastkit.training.encoders.preprocess import to_tensor
from contrastkit.training.engine.checkpoint import LAST, load_checkpoint
from contrastkit.training.export.build import encoder_from_checkpoint
from contrastkit.training.methods import get_method
from tests.helpers import image_bytes, wait_ready

ATOL = 1e-5
# name -> (method, --set overrides): small heads; CLIP with both text towers.
RUNS: dict[str, tuple[str, list[str]]] = {
    "simclr": ("simclr", ["proj_hidden=32", "proj_dim=16"]),
    "moco": ("moco", ["proj_hidden=32", "proj_dim=16", "queue_size=64"]),
    "byol": ("byol", ["proj_hidden=32", "pred_hidden=32", "proj_dim=16"]),
    "swav": ("swav", ["proj_hidden=32", "proj_dim=16", "n_prototypes=10", "n_small_crops=2"]),
    "dino": ("dino", ["proj_hidden=32", "proj_dim=16", "out_dim=64", "n_small_crops=2"]),
    "barlow": ("barlow", ["proj_hidden=32", "proj_dim=16"]),
    "clip-transformer": ("clip", ["text_tower=transformer", "text_width=32", "text_layers=1",
                                  "text_heads=2", "context_length=16"]),
    "clip-minilm": ("clip", ["embed_dim=0"]),  # locked packaged MiniLM, no text projection
}  # fmt: skip
LABELS = ["zero", "one", "two", "three"]
TEMPLATES = ["a photo of the number {}.", "{}"]


@dataclass
class Trained:
    name: str
    run: Path
    export: Path
    method: Any  # the training-side Method, restored by the engine, eval mode


def _export(checkpoint: Path, out: Path, *flags: str) -> int:
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    return export_cli.run(parser.parse_args([str(checkpoint), str(out), *flags]))


def _engine_method(run: Path) -> Any:
    """The Method exactly as `contrastive train --resume` rebuilds it."""
    from contrastkit.training.engine.trainer import Trainer

    state = load_checkpoint(run)
    cfg, params = build_config(dict(state.config), get_method(state.method).Params)
    return Trainer(cfg, params, resume=state).method.eval()


@pytest.fixture(scope="module")
def train_once(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Trained]:
    """name -> Trained; each run is trained and exported once per test module."""
    done: dict[str, Trained] = {}

    def get(name: str) -> Trained:
        if name not in done:
            done[name] = _train_and_export(name, tmp_path_factory.mktemp(name))
        return done[name]

    return get


def _train_and_export(name: str, root: Path) -> Trained:
    method, sets = RUNS[name]
    args = ["train", "--method", method, "--data", "digits", "--backbone", "tiny", "--steps", "2",
            "--batch-size", "32", "--out", str(root / "run"), "--device", "cpu"]  # fmt: skip
    for s in ["image_size=16", "progress=false", "tensorboard=false", "knn_every=0", *sets]:
        args += ["--set", s]
    assert train_main(args) == 0
    assert _export(root / "run", root / "export") == 0
    return Trained(name, root / "run", root / "export", _engine_method(root / "run"))


@pytest.fixture(params=list(RUNS))
def trained(request: pytest.FixtureRequest, train_once: Callable[[str], Trained]) -> Trained:
    return train_once(request.param)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Held-out digits (8x8 grey, upscaled by the service) and a non-square colour photo."""
    knn = load_knn_data("digits", image_size=16)
    assert knn is not None
    digits = [Image.fromarray(a[0].numpy()) for a in knn[1].images[:5]]
    photo = Image.fromarray(skimage.data.astronaut()).resize((48, 36))
    return [*digits, photo]


@pytest.fixture
def client(trained: Trained, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(model=str(trained.export), device="cpu", collections_dir=str(tmp_path))
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.detach().float(), dim=-1)


@torch.no_grad()
def _training_images(
    t: Trained, images: list[Image.Image], projector: bool = False
) -> torch.Tensor:
    """What the training-side model computes on the service's preprocessed pixels."""
    cfg = Preprocess.from_dict(read_meta(t.export).preprocess)
    x = torch.stack([to_tensor(im, cfg) for im in images])
    m = t.method
    if t.name.startswith("clip"):
        return _unit(m.encode_image(x))
    feats = m.image_features(x)
    return _unit(m.projector(feats) if projector else feats)


def _post_images(client: TestClient, images: list[Image.Image], path: str, **data: Any) -> Any:
    files = [("files", (f"{i}.png", image_bytes(im), "image/png")) for i, im in enumerate(images)]
    r = client.post(path, files=files, data=data)
    assert r.status_code == 200, r.text
    return r.json()


def test_service_serves_what_training_computes(
    trained: Trained, client: TestClient, images: list[Image.Image]
) -> None:
    body = _post_images(client, images, "/v1/embed/image")
    got = torch.tensor(body["embeddings"])
    want = _training_images(trained, images)
    assert got.shape == want.shape and body["dim"] == want.shape[1]
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    card = client.get("/v1/models").json()["data"][0]
    # training's image size and normalisation; the resize training's file decoding uses
    want_pp = Preprocess(16, IMAGENET_MEAN, IMAGENET_STD, "bicubic", "shortest")
    assert Preprocess.from_dict(card["preprocessing"]) == want_pp
    is_clip = trained.name.startswith("clip")
    assert sorted(card["capabilities"]) == (["image", "text"] if is_clip else ["image"])
    if not is_clip:
        r = client.post("/v1/embed/text", json={"texts": ["zero"]})
        assert r.status_code >= 400  # image-only: no text capability
        return
    m = trained.method
    texts = ["a photo of the number three.", "zero", "an origami seven"]
    r = client.post("/v1/embed/text", json={"texts": texts})
    assert r.status_code == 200, r.text
    with torch.no_grad():
        want_text = _unit(m.encode_text(texts))
        scale = float(m.scale())
    torch.testing.assert_close(torch.tensor(r.json()["embeddings"]), want_text, atol=ATOL, rtol=0)
    assert card["logit_scale"] == pytest.approx(scale, rel=1e-6)
    assert card["default_templates"] == list(m.templates)  # the ones it trained with
    _check_classify(client, images, want, m, scale)


def _check_classify(
    client: TestClient, images: list[Image.Image], image_emb: torch.Tensor, m: Any, scale: float
) -> None:
    """/v1/classify against a classifier built here with loops: per label, the mean of the
    unit template embeddings, renormalised; probabilities = softmax(scale * cosine)."""
    body = _post_images(client, images, "/v1/classify", labels=LABELS, templates=TEMPLATES)
    rows = []
    with torch.no_grad():
        for label in LABELS:
            emb = _unit(m.encode_text([t.replace("{}", label) for t in TEMPLATES]))
            rows.append(F.normalize(emb.mean(0), dim=0))
    scores = image_emb @ torch.stack(rows).T
    probs = (scale * scores).softmax(-1)
    for i, result in enumerate(body["results"]):
        by_label = {r["label"]: r for r in result["ranking"]}
        for j, label in enumerate(LABELS):
            assert by_label[label]["score"] == pytest.approx(float(scores[i, j]), abs=ATOL)
            assert by_label[label]["probability"] == pytest.approx(float(probs[i, j]), abs=ATOL)


def test_checkpoint_encoder_equals_the_export(trained: Trained, images: list[Image.Image]) -> None:
    from_ckpt = encoder_from_checkpoint(trained.run / LAST, device="cpu")
    from_dir = load_encoder(str(trained.export), device="cpu")
    torch.testing.assert_close(from_ckpt.encode_images(images), from_dir.encode_images(images),
                               atol=0, rtol=0)  # fmt: skip
    assert (
        from_ckpt.model_id.startswith("checkpoint:") and from_ckpt.embed_dim == from_dir.embed_dim
    )


@pytest.mark.parametrize("name", ["simclr", "moco", "byol", "swav", "barlow"])
def test_projector_export_gives_projector_outputs(
    name: str, train_once: Callable[[str], Trained], images: list[Image.Image], tmp_path: Path
) -> None:
    t = train_once(name)
    assert _export(t.run, tmp_path / "proj", "--projector") == 0
    enc = load_encoder(str(tmp_path / "proj"), device="cpu")
    assert enc.embed_dim == 16  # proj_dim, not the backbone's 128 features
    want = _training_images(t, images, projector=True)
    torch.testing.assert_close(enc.encode_images(images), want, atol=ATOL, rtol=0)
    # and the default export is the backbone, whose outputs are something else
    assert load_encoder(str(t.export), device="cpu").embed_dim == t.method.feat_dim == 128


def test_clip_refuses_projector_flag(
    train_once: Callable[[str], Trained], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _export(train_once("clip-transformer").run, tmp_path / "x", "--projector") == 2
    assert "image-only methods" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_minilm_export_references_the_package(
    train_once: Callable[[str], Trained], tmp_path: Path
) -> None:
    export = _copy(train_once("clip-minilm").export, tmp_path / "export")
    assert read_meta(export).architecture["text"]["weights"] == "package"
    # the backbone and the image projection only: MiniLM's 90 MB stay in its package
    assert (export / "weights.safetensors").stat().st_size < 2_000_000
    raw = json.loads((export / "encoder.json").read_text())
    raw["architecture"]["text"]["package_sha256"] = "0" * 64
    (export / "encoder.json").write_text(json.dumps(raw))
    with pytest.raises(ExportError, match="differ from the ones it was trained with"):
        load_encoder(str(export), device="cpu")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tampered_exports_are_refused(train_once: Callable[[str], Trained], tmp_path: Path) -> None:
    t = train_once("simclr")
    weights = _copy(t.export, tmp_path / "a") / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="does not match"):
        load_encoder(str(weights.parent), device="cpu")
    # an architecture that does not fit the weights (sha256 covers only the weights file)
    meta_path = _copy(t.export, tmp_path / "b") / "encoder.json"
    raw = json.loads(meta_path.read_text())
    raw["architecture"]["backbone"]["name"] = "resnet18"
    meta_path.write_text(json.dumps(raw))
    with pytest.raises(ExportError, match="do not fit"):
        load_encoder(str(meta_path.parent), device="cpu")


def test_export_refuses_what_is_not_a_checkpoint(
    train_once: Callable[[str], Trained], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = train_once("simclr")
    plain = tmp_path / "weights.pt"
    torch.save({"layer.weight": torch.zeros(2)}, plain)
    garbage = tmp_path / "notes.pt"
    garbage.write_text("not a checkpoint")
    cases = {
        tmp_path / "missing": "no checkpoint at",
        tmp_path: "no checkpoint at",  # a folder without last.pt
        plain: "not a contrastive training checkpoint",
        garbage: "cannot read checkpoint",
        t.export: "is an export directory",
    }
    for source, message in cases.items():
        assert _export(source, tmp_path / "out") == 2, source
        assert message in capsys.readouterr().err, source
    assert not (tmp_path / "out").exists()


def test_export_out_dir_rules(
    train_once: Callable[[str], Trained], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = train_once("simclr").run
    out = tmp_path / "out"
    assert _export(run, out) == 0
    assert _export(run, out) == 2 and "pass --force" in capsys.readouterr().err
    assert _export(run, out, "--force") == 0
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    assert _export(run, other, "--force") == 2  # never deletes what is not an export
    assert "not an export directory" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "precious"


def test_onnx_flag_without_the_module_is_a_clear_error(
    train_once: Callable[[str], Trained], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(export_cli, "ONNX_MODULE", "training.no_such_module")
    assert _export(train_once("simclr").run, tmp_path / "out", "--onnx") == 2
    assert "--onnx needs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_onnx_flag_writes_graphs_next_to_the_export(
    train_once: Callable[[str], Trained], tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("contrastkit.training.export.onnx")
    out = tmp_path / "out"
    assert _export(train_once("simclr").run, out, "--onnx") == 0
    assert (out / "image.onnx").is_file() and read_meta(out).family == "trained"
