"""Inputs -> their wire form: images as multipart files or base64, vectors as float lists,
search queries as JSON objects. Raises TypeError/ValueError before anything is sent."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from contrastkit.service.client._transport import Files
from contrastkit.service.client.types import ImageInput, VectorInput

QUERY_KINDS = ("text", "image", "vector", "id")


def reject_scalar(items: object, what: str) -> None:
    """A lone str/bytes/path/image is a sequence only by accident: ask for a list."""
    if isinstance(items, str | bytes | os.PathLike | Image.Image):
        raise TypeError(f"{what} must be a sequence (e.g. a list), not a single {type(items)}")


def image_file(image: ImageInput, index: int) -> tuple[str, bytes, str]:
    """One image -> a multipart file tuple (filename, content, content type)."""
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        return f"image{index}.png", buf.getvalue(), "image/png"
    if isinstance(image, bytes | bytearray | memoryview):
        return f"image{index}", bytes(image), "application/octet-stream"
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return path.name or f"image{index}", path.read_bytes(), "application/octet-stream"
    raise TypeError(f"images[{index}]: expected a path, bytes or a PIL image, got {type(image)}")


def image_files(images: Sequence[ImageInput]) -> Files:
    reject_scalar(images, "images")
    return [("files", image_file(img, i)) for i, img in enumerate(images)]


def image_base64(image: ImageInput, index: int) -> str:
    return base64.b64encode(image_file(image, index)[1]).decode("ascii")


def vector_list(vector: VectorInput, what: str) -> list[float]:
    arr = np.asarray(vector, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected one vector (1-d), got shape {arr.shape}")
    return [float(x) for x in arr]


def query(query: Mapping[str, Any], index: int) -> dict[str, Any]:
    """{"text"|"image"|"vector"|"id": value} -> its JSON form (images base64)."""
    if not isinstance(query, Mapping):
        raise TypeError(
            f"queries[{index}]: expected a dict like {{'text': ...}}, got {type(query)}"
        )
    given = [k for k in QUERY_KINDS if query.get(k) is not None]
    unknown = set(query) - set(QUERY_KINDS)
    if len(given) != 1 or unknown:
        raise ValueError(f"queries[{index}]: give exactly one of text, image, vector or id")
    kind = given[0]
    value = query[kind]
    if kind == "image":
        return {"image": image_base64(value, index)}
    if kind == "vector":
        return {"vector": vector_list(value, f"queries[{index}]")}
    return {kind: value}
