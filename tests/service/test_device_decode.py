"""Device JPEG decoding (contrastkit.service.runtime.device_decode), run on the CPU: torchvision's
CPU decode_jpeg has the same code shape as nvJPEG's batched call, so the pixels, the fall-backs and
the errors are checked here; the speed only on a GPU (scripts/gpu_check.sh).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from fastapi.testclient import TestClient
from PIL import Image

from contrastkit.service.runtime.device_decode import DevicePixels, as_jpeg_item, wants_device
from contrastkit.service.runtime.images import ImageError, decode_image
from contrastkit.service.settings import Settings
from contrastkit.training.encoders.base import Preprocess
from contrastkit.training.encoders.preprocess import to_pixels
from tests.helpers import FakeEncoder, image_bytes

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
MakeClient = Callable[..., TestClient]


def _jpeg(name: str, scale: float = 1.0, mode: str = "RGB") -> bytes:
    img = Image.fromarray(getattr(skimage.data, name)())
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    return image_bytes(img.convert(mode), "JPEG", quality=92)


def _encoder(cfg: Preprocess) -> FakeEncoder:
    enc = FakeEncoder()
    enc.info = dataclasses.replace(enc.info, preprocess=cfg)
    return enc


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize(
    "cfg",
    [
        Preprocess(224, interpolation="bicubic"),
        Preprocess(224, interpolation="bilinear"),
        Preprocess(96, resize_mode="squash"),
    ],
    ids=["bicubic", "bilinear", "squash"],
)
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_device_pixels_are_within_one_grey_level_of_the_cpu_path(
    name: str, cfg: Preprocess, scale: float
) -> None:
    """Against PIL at full scale (the CPU path for images under twice the input; larger
    ones it decodes at a reduced DCT scale, which the device path does not imitate)."""
    blob = _jpeg(name, scale)
    cpu = to_pixels(decode_image(blob, 1 << 30), cfg).int()
    device, failed = DevicePixels(_encoder(cfg), 1 << 30).pixels([as_jpeg_item(blob)])
    assert failed == []
    assert device.shape == (1, 3, cfg.size, cfg.size) and device.dtype == torch.uint8
    assert int((device[0].int() - cpu).abs().max()) <= 1


@pytest.mark.parametrize("size", [(1000, 200), (150, 900)])
def test_extreme_aspect_ratios_crop_like_the_cpu_path(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    img = Image.fromarray(arr).resize(size, Image.BICUBIC)  # smooth, as photos are
    blob = image_bytes(img, "JPEG", quality=95)
    cfg = Preprocess(64)
    cpu = to_pixels(decode_image(blob, 1 << 30), cfg).int()
    device, _ = DevicePixels(_encoder(cfg), 1 << 30).pixels([as_jpeg_item(blob)])
    assert int((device[0].int() - cpu).abs().max()) <= 1


def test_greyscale_jpegs_become_rgb_as_on_the_cpu() -> None:
    blob = _jpeg("chelsea", mode="L")
    assert wants_device(blob, 1 << 30)
    cfg = Preprocess(64)
    cpu = to_pixels(decode_image(blob, 1 << 30), cfg).int()
    device, _ = DevicePixels(_encoder(cfg), 1 << 30).pixels([as_jpeg_item(blob)])
    assert int((device[0].int() - cpu).abs().max()) <= 1


def _rotated_jpeg() -> bytes:
    img = Image.fromarray(skimage.data.chelsea())
    exif = img.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: _jpeg("coffee"), True),
        (lambda: image_bytes(skimage.data.coffee(), "PNG"), False),
        (lambda: _jpeg("coffee", mode="CMYK"), False),
        (_rotated_jpeg, False),
        (lambda: _jpeg("coffee")[:-500], False),  # truncated: no end-of-image marker
        (lambda: b"\xff\xd8 not really a jpeg \xff\xd9", False),
    ],
    ids=["plain", "png", "cmyk", "exif-rotated", "truncated", "garbage"],
)
def test_only_plain_complete_jpegs_go_to_the_device(
    make: Callable[[], bytes], expected: bool
) -> None:
    assert wants_device(make(), 1 << 30) is expected


def test_the_pixel_limit_is_checked_from_the_header() -> None:
    with pytest.raises(ImageError) as e:
        wants_device(_jpeg("coffee"), max_pixels=1000, index=3)
    assert e.value.code == "image_too_large" and "image 3" in e.value.message


def test_a_file_the_device_refuses_is_tried_on_the_cpu_and_one_nobody_reads_fails_alone() -> None:
    cfg = Preprocess(32)
    good = _jpeg("coffee")
    corrupt = good[:200] + bytes(len(good) - 202) + good[-2:]  # header kept, data zeroed
    pixels, failed = DevicePixels(_encoder(cfg), 1 << 30).pixels(
        [as_jpeg_item(good), torch.zeros(3, 32, 32, dtype=torch.uint8), as_jpeg_item(corrupt)]
    )
    assert pixels.shape == (3, 3, 32, 32)
    cpu = to_pixels(decode_image(good, 1 << 30), cfg).int()
    assert int((pixels[0].int() - cpu).abs().max()) <= 1
    assert failed in ([], [2])  # libjpeg may decode zeroed data as grey; never an exception
    out = DevicePixels(_encoder(cfg), 1 << 30)([as_jpeg_item(good), as_jpeg_item(b"\xff\xd8")])
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()


def _embed(client: TestClient, *blobs: bytes) -> tuple[int, dict]:  # type: ignore[type-arg]
    files = [("files", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(blobs)]
    r = client.post("/v1/embed/image", files=files)
    return r.status_code, r.json()


def test_http_embeddings_match_the_cpu_path_and_bad_uploads_are_422(
    fake_app_factory: MakeClient, tmp_path: Path
) -> None:
    cfg = Preprocess(64)
    on, off = (
        fake_app_factory(
            Settings(device_decode=d, collections_dir=str(tmp_path / d)), _encoder(cfg)
        )
        for d in ("on", "off")
    )
    blobs = [_jpeg("coffee"), _jpeg("chelsea", 3.0), image_bytes(skimage.data.astronaut(), "PNG")]
    code_on, body_on = _embed(on, *blobs)
    code_off, body_off = _embed(off, *blobs)
    assert code_on == code_off == 200
    a, b = np.array(body_on["embeddings"]), np.array(body_off["embeddings"])
    assert (a * b).sum(axis=1).min() > 0.999  # the 3x photo: full-scale vs DCT-scaled decode
    truncated = _jpeg("coffee")[:-3000]
    for body in (blobs[0], truncated), (b"\xff\xd8\xff\xe0 broken \xff\xd9",):
        code, err = _embed(on, *body)
        assert code == 422, err
        assert err["error"]["code"] == "image_decode_failed"
        assert f"image {len(body) - 1}" in err["error"]["message"]


@pytest.mark.gpu
@pytest.mark.parametrize("name", PHOTOS)
def test_nvjpeg_pixels_are_within_one_grey_level_of_the_cpu_path(name: str) -> None:
    cfg = Preprocess(224)
    enc = _encoder(cfg)
    enc.device = torch.device("cuda")
    blob = _jpeg(name)
    cpu = to_pixels(decode_image(blob, 1 << 30), cfg).int()
    gpu, failed = DevicePixels(enc, 1 << 30).pixels([as_jpeg_item(blob)] * 3)
    assert failed == [] and gpu.device.type == "cuda"
    # nvJPEG's IDCT is not libjpeg's bit for bit: a grey level more at most on a few pixels
    diff = (gpu.cpu().int() - cpu).abs()
    assert int(diff.max()) <= 2 and float(diff.float().mean()) < 0.5
