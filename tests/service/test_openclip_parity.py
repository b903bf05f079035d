"""The service's zero-shot probabilities equal open_clip's own classifier builder's."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import open_clip
import pytest
import skimage.data
import torch
from fastapi.testclient import TestClient
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from PIL import Image

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from tests.helpers import image_bytes, tiny_clip, wait_ready, write_tiny_clip_export

LABELS = ["cat", "dog", "car", "airplane", "cup of coffee"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "itap of the {}."]


def _expected(model: torch.nn.Module, images: list[Image.Image], size: int) -> np.ndarray:
    """open_clip's own pipeline: its transform, its classifier builder, its logit scale."""
    transform = open_clip.image_transform(size, is_train=False)
    tokenizer = open_clip.SimpleTokenizer(context_length=16)
    with torch.no_grad():
        weights = build_zero_shot_classifier(model, tokenizer, LABELS, TEMPLATES, device="cpu")
        x = torch.stack([transform(im) for im in images])
        feats = model.encode_image(x, normalize=True)
        return (model.logit_scale.exp() * feats @ weights).softmax(-1).numpy()


def test_classify_matches_open_clip(tmp_path: Path) -> None:
    model = tiny_clip(seed=3)
    write_tiny_clip_export(tmp_path / "clip", model)
    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut()]
    pngs = [image_bytes(p, "PNG") for p in photos]
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in pngs]
    want = _expected(model, images, 32)
    app = create_app(Settings(model=str(tmp_path / "clip"), device="cpu"))
    with TestClient(app) as client:
        wait_ready(client)
        files = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(pngs)]
        r = client.post(
            "/v1/classify", files=files, data={"labels": LABELS, "templates": TEMPLATES}
        )
    assert r.status_code == 200, r.text
    got = np.zeros_like(want)
    for res in r.json()["results"]:
        for item in res["ranking"]:
            got[res["index"], LABELS.index(item["label"])] = item["probability"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(want, want[:, :1])  # random weights still give distinct rows


@pytest.mark.slow
def test_open_clip_reference_with_random_weights() -> None:
    from contrastkit.training.encoders import load_encoder

    enc = load_encoder("open_clip:RN50", pretrained=None, device="cpu")
    assert enc.model_id == "open_clip:RN50:random-seed0" and enc.embed_dim == 1024
    assert enc.encode_texts(["a cat"]).shape == (1, 1024)
    again = load_encoder("open_clip:RN50", device="cpu")
    torch.testing.assert_close(enc.encode_texts(["a cat"]), again.encode_texts(["a cat"]))
