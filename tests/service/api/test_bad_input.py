"""Bad input gets a clear 4xx in the one error shape, never a 500; odd-but-valid images
are converted and answered 200. Each case runs against the real built-in model."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import skimage.data
from fastapi.testclient import TestClient
from PIL import Image

from tests.helpers import image_bytes

CAT = skimage.data.chelsea()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height; the pixel data is never reached."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 16)
    idat_chunk = b"IDAT" + idat
    body += struct.pack(">I", len(idat)) + idat_chunk + struct.pack(">I", zlib.crc32(idat_chunk))
    return b"\x89PNG\r\n\x1a\n" + body


def _cmyk() -> bytes:
    return image_bytes(Image.fromarray(CAT).convert("CMYK"), "JPEG")


def _palette() -> bytes:
    return image_bytes(Image.fromarray(CAT).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")


def _sixteen_bit() -> bytes:
    arr = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    return image_bytes(Image.fromarray(arr), "PNG")


def _alpha(mode: str) -> Callable[[], bytes]:
    def make() -> bytes:
        img = Image.fromarray(CAT).convert(mode)
        return image_bytes(img, "PNG")

    return make


def _gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    return image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def _files(*blobs: bytes) -> dict[str, Any]:
    return {
        "files": [
            ("files", (f"{i}.bin", b, "application/octet-stream")) for i, b in enumerate(blobs)
        ]
    }


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


IMG = "/v1/embed/image"
TXT = "/v1/embed/text"
CLS = "/v1/classify"
OAI = "/v1/embeddings"
JPEG = image_bytes(CAT, "JPEG")

# (id, path, request kwargs, expected status, expected error code or None for 200)
CASES: list[tuple[str, str, Callable[[], dict[str, Any]], int, str | None]] = [
    ("not-an-image", IMG, lambda: _files(b"hello, I am text"), 422, "image_decode_failed"),
    ("empty-file", IMG, lambda: _files(b""), 422, "image_decode_failed"),
    ("truncated-jpeg", IMG, lambda: _files(JPEG[: len(JPEG) // 2]), 422, "image_decode_failed"),
    (
        "decompression-bomb",
        IMG,
        lambda: _files(_png_claiming(60000, 60000)),
        413,
        "image_too_large",
    ),
    ("one-pixel", IMG, lambda: _files(image_bytes(Image.new("RGB", (1, 1), "red"))), 200, None),
    ("wide-strip", IMG, lambda: _files(image_bytes(Image.new("RGB", (20000, 1)))), 200, None),
    ("tall-strip", IMG, lambda: _files(image_bytes(Image.new("L", (1, 20000)))), 200, None),
    ("cmyk", IMG, lambda: _files(_cmyk()), 200, None),
    ("palette", IMG, lambda: _files(_palette()), 200, None),
    ("16-bit", IMG, lambda: _files(_sixteen_bit()), 200, None),
    ("rgba", IMG, lambda: _files(_alpha("RGBA")()), 200, None),
    ("la", IMG, lambda: _files(_alpha("LA")()), 200, None),
    ("animated-gif", IMG, lambda: _files(_gif()), 200, None),
    (
        "url-not-image",
        IMG,
        lambda: {"json": {"images": ["https://example.com/cat.jpg"]}},
        422,
        "url_not_supported",
    ),
    ("bad-base64", IMG, lambda: {"json": {"images": ["not base64!!"]}}, 422, "invalid_base64"),
    ("no-images-json", IMG, lambda: {"json": {"images": []}}, 422, "empty_input"),
    ("no-images-multipart", IMG, lambda: {"files": {"x": (None, "y")}}, 422, "empty_input"),
    (
        "too-many-images",
        IMG,
        lambda: {"json": {"images": [_b64(JPEG)] * 65}},
        422,
        "too_many_items",
    ),
    (
        "image-wrong-content-type",
        IMG,
        lambda: {"content": b"abc", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    ("empty-text-list", TXT, lambda: {"json": {"texts": []}}, 422, "empty_input"),
    ("empty-string", TXT, lambda: {"json": {"texts": [""]}}, 422, "empty_text"),
    ("blank-string", TXT, lambda: {"json": {"texts": ["   "]}}, 422, "empty_text"),
    ("long-text-truncated", TXT, lambda: {"json": {"texts": ["word " * 20000]}}, 200, None),
    ("ten-thousand-texts", TXT, lambda: {"json": {"texts": ["x"] * 10000}}, 422, "too_many_items"),
    ("nul-character", TXT, lambda: {"json": {"texts": ["a\x00b"]}}, 422, "invalid_text"),
    (
        "lone-surrogate",
        TXT,
        lambda: {
            "content": b'{"texts": ["a\\ud800b"]}',
            "headers": {"content-type": "application/json"},
        },
        422,
        "invalid_text",
    ),
    ("texts-not-a-list", TXT, lambda: {"json": {"texts": "hello"}}, 422, "invalid_request"),
    ("missing-field", TXT, lambda: {"json": {"text": ["hello"]}}, 422, "invalid_request"),
    (
        "invalid-json",
        TXT,
        lambda: {"content": b"{not json", "headers": {"content-type": "application/json"}},
        422,
        "invalid_request",
    ),
    (
        "text-wrong-content-type",
        TXT,
        lambda: {"data": {"texts": "hi"}},
        415,
        "unsupported_media_type",
    ),
    (
        "unknown-model",
        TXT,
        lambda: {"json": {"texts": ["hi"], "model": "gpt-9"}},
        404,
        "model_not_found",
    ),
    (
        "openai-unknown-model",
        OAI,
        lambda: {"json": {"model": "text-embedding-3-small", "input": "hi"}},
        404,
        "model_not_found",
    ),
    (
        # token ids are read (tests/service/api/test_openai_tokens.py), never mixed with text
        "openai-token-ids-and-strings",
        OAI,
        lambda: {"json": {"model": "builtin", "input": ["hi", [1, 2, 3]]}},
        422,
        "invalid_request",
    ),
    (
        "openai-empty-token-ids",
        OAI,
        lambda: {"json": {"model": "builtin", "input": [[1, 2], []]}},
        422,
        "empty_text",
    ),
    (
        "openai-empty-string",
        OAI,
        lambda: {"json": {"model": "builtin", "input": ""}},
        422,
        "empty_text",
    ),
    (
        "openai-wrong-dimensions",
        OAI,
        lambda: {"json": {"model": "builtin", "input": "a", "dimensions": 7}},
        422,
        "unsupported_dimensions",
    ),
    (
        "too-many-labels",
        CLS,
        lambda: {"json": {"images": [_b64(JPEG)], "labels": [f"l{i}" for i in range(1001)]}},
        422,
        "too_many_labels",
    ),
    (
        "too-many-templates",
        CLS,
        lambda: {"json": {"images": [_b64(JPEG)], "labels": ["cat"], "templates": ["{} x"] * 101}},
        422,
        "too_many_templates",
    ),
    (
        "template-without-braces",
        CLS,
        lambda: {"json": {"images": [_b64(JPEG)], "labels": ["cat"], "templates": ["a photo"]}},
        422,
        "invalid_template",
    ),
    (
        "no-labels",
        CLS,
        lambda: {"json": {"images": [_b64(JPEG)], "labels": []}},
        422,
        "empty_input",
    ),
    (
        "duplicate-labels",
        CLS,
        lambda: {"json": {"images": [_b64(JPEG)], "labels": ["cat", "cat"]}},
        422,
        "duplicate_labels",
    ),
    ("classify-no-images", CLS, lambda: {"files": {"labels": (None, "cat")}}, 422, "empty_input"),
    (
        "classify-bad-top-k",
        CLS,
        lambda: {"json": {"images": [_b64(JPEG)], "labels": ["a"], "top_k": 0}},
        422,
        "invalid_request",
    ),
    ("unknown-route", "/v1/nothing", lambda: {"json": {}}, 404, "not_found"),
]


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input(
    builtin_client: TestClient,
    path: str,
    kwargs: Callable[[], dict[str, Any]],
    status: int,
    code: str | None,
) -> None:
    r = builtin_client.post(path, **kwargs())
    assert r.status_code == status, r.text
    if code is None:
        body = r.json()
        emb = np.array(body["embeddings"])
        assert emb.shape == (1, body["dim"]) and np.isfinite(emb).all()
        return
    err = r.json()["error"]
    assert err["code"] == code
    assert isinstance(err["message"], str) and len(err["message"]) > 10


def test_server_still_serves_after_bad_input(builtin_client: TestClient) -> None:
    builtin_client.post(IMG, **_files(b"garbage"))
    r = builtin_client.post(TXT, json={"texts": ["still alive"]})
    assert r.status_code == 200


def test_exif_rotated_photo_is_turned_upright(builtin_client: TestClient) -> None:
    upright = Image.fromarray(CAT)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: viewer must rotate 90° clockwise
    tagged = image_bytes(stored, "PNG", exif=exif)
    vecs = [
        np.array(builtin_client.post(IMG, **_files(b)).json()["embeddings"][0])
        for b in (tagged, image_bytes(upright, "PNG"), image_bytes(stored, "PNG"))
    ]
    np.testing.assert_allclose(vecs[0], vecs[1], atol=1e-5)
    assert np.abs(vecs[0] - vecs[2]).max() > 1e-3  # without the tag, the embedding differs


def test_animated_gif_uses_first_frame(builtin_client: TestClient) -> None:
    gif = np.array(builtin_client.post(IMG, **_files(_gif())).json()["embeddings"][0])
    red = np.array(
        builtin_client.post(
            IMG, **_files(image_bytes(Image.new("RGB", (40, 30), (255, 0, 0))))
        ).json()["embeddings"][0]
    )
    np.testing.assert_allclose(gif, red, atol=1e-5)


def test_long_text_is_truncated_not_refused(builtin_client: TestClient) -> None:
    long = "the cat sat on the mat " * 2000
    r = builtin_client.post(TXT, json={"texts": [long, long + " and more words at the end"]})
    emb = np.array(r.json()["embeddings"])
    # both are cut at the model's context, so the differing tail is never seen
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-5)
