"""Hostile image files against both image routes, with the device decode path on and off:
each is answered with a 4xx naming what is wrong (or a 200 where the file is a valid
image after all), never a 500, and the server serves a good image afterwards.

Device decoding runs here on the CPU (torchvision's CPU `decode_jpeg`, the same code
shape as nvJPEG's); the same hostile set against nvJPEG itself is at the end, for a GPU.
"""

from __future__ import annotations

import base64
import dataclasses
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import skimage.data
import torch
from fastapi.testclient import TestClient
from PIL import EpsImagePlugin, Image

from contrastkit.service.runtime.device_decode import DevicePixels, as_jpeg_item, wants_device
from contrastkit.service.runtime.images import ImageError, decode_image
from contrastkit.service.settings import Settings
from contrastkit.training.encoders.base import Preprocess
from contrastkit.training.encoders.preprocess import to_pixels
from tests.helpers import FakeEncoder, image_bytes

MakeClient = Callable[..., TestClient]
CAT = Image.fromarray(skimage.data.chelsea())
GOOD = image_bytes(CAT, "JPEG", quality=90)
# noise compresses badly: a JPEG well past the device path's bytes-per-pixel bound at 1x1
NOISE = image_bytes(
    np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8), "JPEG", quality=95
)


def with_frame_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its start-of-frame's size replaced; the scan data is left as it is."""
    b, i = bytearray(jpeg), 2
    while i + 4 <= len(b):
        marker, (length,) = b[i + 1], struct.unpack(">H", b[i + 2 : i + 4])
        if marker in (0xC0, 0xC1, 0xC2):  # baseline, extended, progressive
            b[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(b)
        i += 2 + length
    raise ValueError("no start-of-frame marker")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, raw: bytes, extra: bytes = b"") -> bytes:
    """An RGB PNG with this header and `raw` (deflated) as its only data chunk."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    body = ihdr + extra + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def dds_unknown_pixel_format() -> bytes:
    """A DDS header whose pixel-format flags name no format: PIL raises
    NotImplementedError, which was a 500."""
    head = struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + bytes(44)
    pixel_format = struct.pack("<2I4s5I", 32, 0x4000, bytes(4), 0, 0, 0, 0, 0)
    return b"DDS " + head + pixel_format + struct.pack("<4I", 0x1000, 0, 0, 0) + bytes(68)


EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    b"0 0 moveto 10 10 lineto stroke showpage\n%%EOF\n"
)
RANDOM = np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes()

# (id, the file, expected status, expected error code; None: 200)
HOSTILE: list[tuple[str, Callable[[], bytes], int, str | None]] = [
    ("zero-bytes", lambda: b"", 422, "image_decode_failed"),
    ("truncated-jpeg", lambda: GOOD[: len(GOOD) // 2], 422, "image_decode_failed"),
    (
        "jpeg-declares-65535x65535",
        lambda: with_frame_size(GOOD, 65535, 65535),
        413,
        "image_too_large",
    ),
    ("jpeg-declares-0x0", lambda: with_frame_size(GOOD, 0, 0), 422, "image_decode_failed"),
    ("progressive-jpeg", lambda: image_bytes(CAT, "JPEG", progressive=True), 200, None),
    ("cmyk-jpeg", lambda: image_bytes(CAT.convert("CMYK"), "JPEG"), 200, None),
    ("garbage-after-header", lambda: GOOD[:600] + RANDOM, 422, "image_decode_failed"),
    (
        "garbage-after-header-ending-ffd9",
        lambda: GOOD[:600] + RANDOM + b"\xff\xd9",
        422,
        "image_decode_failed",
    ),
    ("jpeg-1x1-frame-over-a-photo", lambda: with_frame_size(NOISE, 1, 1), 200, None),
    (
        "jpeg-1x1-progressive-over-a-photo",
        lambda: with_frame_size(image_bytes(CAT, "JPEG", progressive=True), 1, 1),
        200,
        None,
    ),
    ("jpeg-start-marker-only", lambda: b"\xff\xd8", 422, "image_decode_failed"),
    ("jpeg-markers-only", lambda: b"\xff\xd8\xff\xd9", 422, "image_decode_failed"),
    ("megabytes-after-the-end-marker", lambda: GOOD + bytes(3 << 20), 200, None),
    ("png-declares-60000x60000", lambda: png(60000, 60000, bytes(16)), 413, "image_too_large"),
    # 200 MB of zeros in 200 KB: only the 100x100 image's rows are inflated
    ("png-deflate-bomb", lambda: png(100, 100, bytes(200_000_000)), 200, None),
    (
        "png-text-chunk-bomb",
        lambda: png(
            1, 1, bytes(4), _chunk(b"zTXt", b"k\0\0" + zlib.compress(bytes(200_000_000), 9))
        ),
        422,
        "image_decode_failed",
    ),
    ("dds-unknown-pixel-format", dds_unknown_pixel_format, 422, "image_decode_failed"),
    ("eps-postscript", lambda: EPS, 422, "image_decode_failed"),
]
IDS = [c[0] for c in HOSTILE]


@pytest.fixture(scope="module")
def blobs() -> dict[str, bytes]:
    """Each hostile file, made once (the bombs take a moment to deflate)."""
    return {name: make() for name, make, _, _ in HOSTILE}


@pytest.fixture(params=["off", "on"], ids=["cpu-decode", "device-decode"])
def client(request: pytest.FixtureRequest, fake_app_factory: MakeClient) -> TestClient:
    return fake_app_factory(Settings(device_decode=request.param, collections=False))


def _multipart(client: TestClient, blob: bytes) -> Any:
    return client.post("/v1/embed/image", files=[("files", ("x.jpg", blob, "image/jpeg"))])


def _openai(client: TestClient, blob: bytes) -> Any:
    data_url = "data:image/jpeg;base64," + base64.b64encode(blob).decode()
    body = {"model": "fake:test", "modality": "image", "input": [data_url]}
    return client.post("/v1/embeddings", json=body)


@pytest.mark.parametrize("send", [_multipart, _openai], ids=["embed-image", "embeddings"])
def test_every_hostile_image_is_a_clear_4xx_or_a_200_never_a_500(
    client: TestClient, blobs: dict[str, bytes], send: Callable[[TestClient, bytes], Any]
) -> None:
    seen = {}
    for name, _, status, code in HOSTILE:
        r = send(client, blobs[name])
        seen[name] = r.status_code
        if code is None:
            assert r.status_code == 200, (name, r.text)
            continue
        err = r.json()["error"]
        assert (r.status_code, err["code"]) == (status, code), (name, r.text)
        assert "image 0" in err["message"], (name, err)  # one line naming which image
        assert "\n" not in err["message"]
    assert 500 not in seen.values()
    # nothing is left broken: a good image still embeds, and the server is ready
    r = send(client, GOOD)
    assert r.status_code == 200, r.text
    assert client.get("/readyz").status_code == 200


def test_a_hostile_image_among_good_ones_is_named_and_the_server_serves_on(
    client: TestClient,
) -> None:
    """A bad file among good ones (and one the device path leaves to the CPU): the
    request is refused naming the bad one; the next request embeds."""
    files = [GOOD, with_frame_size(NOISE, 1, 1), dds_unknown_pixel_format(), GOOD]
    r = client.post(
        "/v1/embed/image",
        files=[("files", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(files)],
    )
    assert r.status_code == 422 and "image 2" in r.json()["error"]["message"]
    assert _multipart(client, GOOD).status_code == 200


def test_an_eps_upload_never_runs_ghostscript(
    monkeypatch: pytest.MonkeyPatch, fake_app_factory: MakeClient
) -> None:
    """EPS is PostScript: PIL would hand it to Ghostscript (a subprocess) to rasterise.
    The service does not open it at all."""
    ran: list[object] = []

    def ghostscript(*args: object, **kwargs: object) -> None:
        ran.append(args)
        raise OSError("ghostscript would have run here")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    client = fake_app_factory(Settings(collections=False))
    r = _multipart(client, EPS)
    assert r.status_code == 422 and r.json()["error"]["code"] == "image_decode_failed"
    assert "not a readable image" in r.json()["error"]["message"]
    assert ran == []


@pytest.mark.parametrize(("name", "make", "status", "code"), HOSTILE, ids=IDS)
def test_decode_image_raises_only_image_errors(
    name: str, make: Callable[[], bytes], status: int, code: str | None, blobs: dict[str, bytes]
) -> None:
    """The decode pool's function itself: an ImageError with the expected code, or an
    upright RGB image."""
    if code is None:
        assert decode_image(blobs[name], 40_000_000, draft_size=16).mode == "RGB"
        return
    with pytest.raises(ImageError) as e:
        decode_image(blobs[name], 40_000_000, draft_size=16)
    assert e.value.code == code


def test_a_jpeg_with_more_bytes_than_its_frame_needs_is_decoded_on_the_cpu() -> None:
    """A 1x1 start-of-frame over a photo's scan: not handed to nvJPEG."""
    assert wants_device(NOISE, 1 << 30)
    assert not wants_device(with_frame_size(NOISE, 1, 1), 1 << 30)
    # a small image with ordinary headers still goes to the device
    assert wants_device(image_bytes(Image.new("RGB", (2, 2), "red"), "JPEG"), 1 << 30)


class _AnyDevice(FakeEncoder):
    """The fake model on any device: its projection stays on the CPU, the pixels come to it."""

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return super()._image_forward(pixels.float().cpu())


def _encoder(device: str) -> FakeEncoder:
    enc = _AnyDevice()
    enc.info = dataclasses.replace(enc.info, preprocess=Preprocess(32))
    enc.device = torch.device(device)
    return enc


def _device_decoder_survives_the_hostile_set(device: str, blobs: dict[str, bytes]) -> int:
    """Every hostile file that could be sent as a JPEG handed straight to the device
    decoder (past wants_device's screening), alone and in one batch with good files:
    each comes back decoded or failed, never an exception, and a good JPEG decodes on the
    device afterwards within a few grey levels of the CPU path."""
    pixels = DevicePixels(_encoder(device), 40_000_000)
    hostile = [b for b in blobs.values() if b and _within_the_pixel_limit(b)]
    for blob in hostile:
        out, failed = pixels.pixels([as_jpeg_item(blob)])
        assert out.shape == (1, 3, 32, 32) and failed in ([], [0])
    mixed = [as_jpeg_item(GOOD)] + [as_jpeg_item(b) for b in hostile] + [as_jpeg_item(GOOD)]
    out, failed = pixels.pixels(mixed)
    assert out.shape == (len(mixed), 3, 32, 32)
    assert 0 not in failed and len(mixed) - 1 not in failed
    good, failed = pixels.pixels([as_jpeg_item(GOOD)] * 2)
    assert failed == [] and good.device.type == torch.device(device).type
    cpu = to_pixels(decode_image(GOOD, 1 << 30), Preprocess(32)).int()
    assert int((good[1].cpu().int() - cpu).abs().max()) <= 2
    return len(hostile)


def _within_the_pixel_limit(blob: bytes) -> bool:
    """Whether the file passes the header's pixel check, which comes before any decoding
    (a 65535x65535 frame never reaches a decoder)."""
    try:
        wants_device(blob, 40_000_000)
    except ImageError:
        return False
    return True


def test_the_device_decoder_on_the_cpu_survives_the_hostile_set(blobs: dict[str, bytes]) -> None:
    assert _device_decoder_survives_the_hostile_set("cpu", blobs) > 0  # files were tried


@pytest.mark.gpu
def test_nvjpeg_survives_the_hostile_set(blobs: dict[str, bytes]) -> None:
    """The same on CUDA: nvJPEG refuses or decodes each, the CUDA context stays usable."""
    assert _device_decoder_survives_the_hostile_set("cuda", blobs) > 0
    torch.cuda.synchronize()  # a sticky CUDA error from a decode would surface here


@pytest.mark.gpu
def test_nvjpeg_http_path_answers_the_hostile_set(
    fake_app_factory: MakeClient, blobs: dict[str, bytes]
) -> None:
    """Through the API with the model on CUDA and device decoding on: the same answers
    as on the CPU, and a good JPEG embeds afterwards."""
    client = fake_app_factory(Settings(device_decode="on", collections=False), _encoder("cuda"))
    for name, _, status, code in HOSTILE:
        r = _multipart(client, blobs[name])
        assert r.status_code == status, (name, r.text)
        if code is not None:
            assert r.json()["error"]["code"] == code, name
    assert _multipart(client, GOOD).status_code == 200
