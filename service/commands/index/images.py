"""Images from files for `contrastive index add`: read and decoded as the server would,
so a file the server would refuse is skipped here with the decoder's own words."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class NotAnImageError(Exception):
    """A file `add` skips: why it is no usable image, in words for a warning."""


def read_image(path: Path, max_pixels: int, draft_size: int | None) -> tuple[bytes, Any]:
    """A file -> (its bytes, the decoded RGB image); NotAnImageError if it is none.

    PIL first identifies the file from its header, so a large file that is no image costs
    a few KB of reading; an image is read once, then decoded from memory (as the server
    decodes it, including the pixel limit)."""
    from PIL import Image, UnidentifiedImageError

    from contrastkit.service.runtime.images import ImageError, decode_image

    with open(path, "rb") as f:
        try:
            with Image.open(f):
                pass
        except UnidentifiedImageError as e:
            raise NotAnImageError("not an image (no image format recognises it)") from e
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise NotAnImageError(f"not a readable image ({e})") from e
        except Image.DecompressionBombError as e:
            raise NotAnImageError(str(e)) from e
        f.seek(0)
        data = f.read()
    try:
        return data, decode_image(data, max_pixels, draft_size=draft_size, name="it")
    except ImageError as e:  # "it is empty", "it has no pixels", ...: used as it is
        raise NotAnImageError(f"{e.message} ({e.detail})" if e.detail else e.message) from e


@dataclass
class ImageFile:
    """One image on its way into a collection: its id, file and what the target sends."""

    id: str
    path: Path
    size: int
    payload: Any  # bytes (HTTP) or the model's input tensor (in-process)
    thumbnail: str | None = None  # a data: URL (--thumbnails)

    @property
    def source(self) -> str | None:
        """What the item is stored as coming from: the file's absolute path, so that it
        can be embedded again (by another model); None for a path no collection can
        store as a source (not UTF-8, or past items.MAX_SOURCE_BYTES)."""
        from contrastkit.service.index.items import ItemError, check_source

        try:
            return check_source(os.path.abspath(self.path), "the path")
        except ItemError:
            return None

    @property
    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"path": os.path.abspath(self.path), "bytes": self.size}
        if self.thumbnail is not None:
            meta["thumbnail"] = self.thumbnail
        return meta
