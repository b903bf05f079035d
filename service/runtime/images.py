"""Untrusted bytes -> upright 8-bit RGB PIL image, or a clear ImageError.

Everything here runs in the decode thread pool, never on the event loop and never in
the model's thread.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from contrastkit.service.domain_errors import DomainError
from contrastkit.training.encoders.preprocess import ensure_rgb

# We enforce our own pixel limit (settings.max_image_pixels) before decoding; PIL's
# global one would raise at an unrelated size.
Image.MAX_IMAGE_PIXELS = None

# Formats PIL reads by running another program on the file: EPS through Ghostscript (a
# subprocess interpreting the upload's PostScript), WMF/EMF through the operating system's
# metafile renderer. An upload is data: it is never run, so these are not opened at all.
REFUSED_FORMATS = frozenset({"EPS", "WMF"})

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
        img = Image.open(io.BytesIO(data), formats=readable_formats())
    except MemoryError as e:
        raise _too_much_memory(where) from e
    except Exception as e:  # PIL's readers raise a zoo on hostile bytes
        raise ImageError(
            "image_decode_failed",
            f"{where} is not a readable image (PNG, JPEG, GIF, WebP, ...)",
            _why(e),
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
    except MemoryError as e:
        raise _too_much_memory(where) from e
    except Exception as e:  # see _why
        raise ImageError(
            "image_decode_failed",
            f"{where} could not be decoded (truncated or corrupt?)",
            _why(e),
        ) from e


@functools.cache
def readable_formats() -> tuple[str, ...]:
    """Every format PIL can open, less REFUSED_FORMATS (its plugins registered first: an
    open given its own list of formats registers none)."""
    Image.init()  # registers every plugin, so that OPEN lists them all
    return tuple(f for f in Image.OPEN if f not in REFUSED_FORMATS)


def _why(e: Exception) -> str:
    """An exception from PIL -> the error's detail.

    Why any exception, not only OSError and ValueError: PIL's format readers raise what
    their parsing hits on hostile bytes (a fuzzed DDS header: NotImplementedError; a
    fuzzed AVIF: RuntimeError; others struct.error, IndexError), each of which would
    otherwise be a 500 for what is the upload's fault. The detail names its type, so that
    a bug of ours that hides here still shows in the answer."""
    if isinstance(e, UnidentifiedImageError):  # its text is the repr of our BytesIO
        return "no image format recognised in its first bytes"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _too_much_memory(where: str) -> ImageError:
    """A decode that ran out of memory below the pixel limit: too large for this server."""
    return ImageError(
        "image_too_large",
        f"{where} needs more memory to decode than this server has; send a smaller image",
    )


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
