"""The export directory: round trip, and refusal of anything tampered with or foreign."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from contrastkit.training.encoders import load_encoder
from contrastkit.training.encoders.exported.format import ExportError, read_export
from contrastkit.training.encoders.preprocess import to_tensor
from tests.helpers import tiny_clip, write_tiny_clip_export, write_tiny_timm_export


def test_round_trip_open_clip(tmp_export: Path) -> None:
    model = tiny_clip()
    write_tiny_clip_export(tmp_export, model)
    assert sorted(p.name for p in tmp_export.iterdir()) == ["encoder.json", "weights.safetensors"]
    meta, state = read_export(tmp_export)
    assert meta.family == "open_clip" and meta.capabilities == ["image", "text"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k], v)
    enc = load_encoder(str(tmp_export), device="cpu")
    image = Image.new("RGB", (40, 32), (10, 200, 30))
    with torch.no_grad():
        x = to_tensor(image, enc.info.preprocess)[None]
        want_img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        want_txt = model.encode_text(enc.tokenizer(["a red square"]), normalize=True)  # type: ignore[attr-defined]
    torch.testing.assert_close(enc.encode_images([image]), want_img, atol=1e-6, rtol=0)
    torch.testing.assert_close(enc.encode_texts(["a red square"]), want_txt, atol=1e-6, rtol=0)
    assert enc.model_id == f"export:open_clip:tiny-clip:{meta.weights_sha256[:12]}"


def test_timm_export_is_image_only(tmp_export: Path) -> None:
    write_tiny_timm_export(tmp_export)
    enc = load_encoder(str(tmp_export), device="cpu")
    assert enc.capabilities == frozenset({"image"})
    assert enc.encode_images([Image.new("RGB", (50, 50))]).shape == (1, enc.embed_dim)


def test_tampered_weights_are_refused(tmp_export: Path) -> None:
    write_tiny_timm_export(tmp_export)
    weights = tmp_export / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="does not match"):
        load_encoder(str(tmp_export), device="cpu")


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_and_never_run(tmp_export: Path, tmp_path: Path) -> None:
    write_tiny_timm_export(tmp_export)
    marker = tmp_path / "pwned"
    weights = tmp_export / "weights.safetensors"
    weights.write_bytes(pickle.dumps({"x": _Payload(marker)}))
    # even with the hash updated to match, the file is not parsed as a pickle
    meta = json.loads((tmp_export / "encoder.json").read_text())
    from contrastkit.training.encoders.exported.format import sha256_file

    meta["weights_sha256"] = sha256_file(weights)
    (tmp_export / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="not a safetensors file"):
        load_encoder(str(tmp_export), device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=99), "format_version"),
        (lambda m: m.update(family="keras"), "unknown family"),
        (lambda m: m.pop("embed_dim"), "lacks"),
        (lambda m: m.update(weights_file="../../etc/passwd"), "plain file name"),
    ],
)
def test_malformed_meta_is_refused(tmp_export: Path, edit: object, message: str) -> None:
    write_tiny_timm_export(tmp_export)
    meta = json.loads((tmp_export / "encoder.json").read_text())
    edit(meta)  # type: ignore[operator]
    (tmp_export / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=message):
        read_export(tmp_export)


def test_missing_or_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not an export directory"):
        read_export(tmp_path)
    (tmp_path / "encoder.json").write_text("{oops")
    with pytest.raises(ExportError, match="not valid JSON"):
        read_export(tmp_path)


def test_weights_that_do_not_fit_the_architecture(tmp_export: Path) -> None:
    write_tiny_timm_export(tmp_export)
    meta = json.loads((tmp_export / "encoder.json").read_text())
    meta["architecture"]["name"] = "test_vit"
    (tmp_export / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="do not fit"):
        load_encoder(str(tmp_export), device="cpu")
