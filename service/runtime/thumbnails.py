"""Small JPEG thumbnails as data: URLs, the form the web page stores in item metadata
(`{"thumbnail": "data:image/jpeg;base64,..."}`) and shows in its search results."""

from __future__ import annotations

import base64
import io

from PIL import Image

DEFAULT_SIZE = 128  # longest side, as the web page makes them


def thumbnail_data_url(image: Image.Image, size: int = DEFAULT_SIZE, quality: int = 80) -> str:
    """An RGB image -> a JPEG `data:` URL at most `size` pixels on its longest side
    (a few kB at 128 px)."""
    if size < 1:
        raise ValueError("thumbnail size must be positive")
    small = image.convert("RGB")
    small.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
