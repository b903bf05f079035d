"""Untrusted bytes -> upright 8-bit RGB PIL image, or a clear ImageError.

Everything here runs in the decode thread pool, never on the event loop and never in
the model's thread.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from service.domain_errors import DomainError
from training.encoders.preprocess import ensure_rgb

# We enforce our own pixel limit (settings.max_image_pixels) before decoding; PIL's
# global one would raise at an unrelated size.
Image.MAX_IMAGE_PIXELS = None

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_DATA_URL = re.compile(r"^data:[^,]*?;base64,", re.IGNORECASE)


class ImageError(DomainError):
    """Bytes that are no usable image: unreadable, too large, a URL, bad base64."""


def decode_image(
    data: bytes,
    max_pixels: int,
    draft_size: int | None = None,
    index: int = 0,
    name: str | None = None,
) -> Image.Image:
    """Image file bytes -> RGB image; ImageError `image_decode_failed` if it is not a
    readable image, `image_too_large` past `max_pixels`.

    The messages call it `name` ("image {index}" by default: the position in a request;
    the CLI, which names the file itself, says "it"). `draft_size` lets JPEG decode at a
    reduced scale that still covers the model's input (libjpeg's DCT scaling): a
    12-megapixel photo decodes 4-8x faster.
    """
    where = name if name is not None else f"image {index}"
    if not data:
        raise ImageError("image_decode_failed", f"{where} is empty")
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(
            "image_decode_failed",
            f"{where} is not a readable image (PNG, JPEG, GIF, WebP, ...)",
            str(e),
        ) from e
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError("image_decode_failed", f"{where} has no pixels")
    if width * height > max_pixels:
        raise ImageError(
            "image_too_large",
            f"{where} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )
    try:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()  # the first frame of an animation
        return ensure_rgb(img)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombWarning) as e:
        raise ImageError(
            "image_decode_failed",
            f"{where} could not be decoded (truncated or corrupt?)",
            str(e),
        ) from e


def decode_base64_image(value: str, index: int = 0) -> bytes:
    """A base64 string or a data: URL -> bytes. URLs are refused: we never fetch them."""
    value = value.strip()
    if _URL.match(value):
        raise ImageError(
            "url_not_supported",
            f"image {index} is a URL; the service never fetches URLs: send the image's bytes "
            "(multipart upload, or base64 in JSON)",
        )
    value = "".join(_DATA_URL.sub("", value, count=1).split())  # line-wrapped base64 is fine
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError("invalid_base64", f"image {index} is not valid base64", str(e)) from e
