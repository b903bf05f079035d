"""Embedding stored items again, from their sources, with another model (for `migrate`).

A source is read the way `index add` stored it: an absolute path (or a file:// URI) is an
image file, decoded exactly as `add` decodes it; any other string is text, embedded with
the model's text tower when it has one. What cannot be embedded is returned as a Missing
with the reason, never dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contrastkit.service.commands.index.images import NotAnImageError, read_image

if TYPE_CHECKING:
    import numpy as np

    from contrastkit.service.index.backend import Item
    from contrastkit.training.encoders import Encoder

# URIs that name something elsewhere: fetching is not this version's business.
REMOTE_SCHEMES = ("http://", "https://", "s3://", "gs://")


@dataclass
class Missing:
    """An item the new model could not embed: its id, its source (or None), and why."""

    id: str
    source: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "reason": self.reason}


@dataclass
class Embedded:
    """Items ready for an upsert: ids, float32 [n, dim] unit vectors, metadata, sources."""

    ids: list[str]
    vectors: np.ndarray
    metadata: list[dict[str, Any]]
    sources: list[str | None]


def source_path(source: str) -> Path | None:
    """The file a source names (an absolute path or a file:// URI), or None: text."""
    if source.startswith("file://"):
        return Path(source[len("file://") :])
    return Path(source) if os.path.isabs(source) else None


class Reembedder:
    """One encoder and the decoding settings `add` uses (pixel limit, model input size)."""

    def __init__(self, encoder: Encoder, max_pixels: int) -> None:
        self.encoder = encoder
        self.max_pixels = max_pixels

    def embed(self, items: list[Item]) -> tuple[Embedded | None, list[Missing]]:
        """-> (the items that could be embedded, or None when none could; the others)."""
        images: list[tuple[Item, Any]] = []
        texts: list[Item] = []
        missing: list[Missing] = []
        for it in items:
            why = self._sort(it, images, texts)
            if why is not None:
                missing.append(Missing(it.id, it.source, why))
        return self._encode(images, texts), missing

    def _sort(self, it: Item, images: list[tuple[Item, Any]], texts: list[Item]) -> str | None:
        """Put `it` with the images (decoded) or the texts -> None, or why it can't be."""
        if not it.source:
            return "no source stored"
        if it.source.startswith(REMOTE_SCHEMES):
            return "a remote URI (not fetched by this version)"
        path = source_path(it.source)
        if path is None:
            if "text" not in self.encoder.capabilities:
                return "a text source, and the model has no text tower"
            texts.append(it)
            return None
        try:
            _, image = read_image(path, self.max_pixels, self.encoder.info.preprocess.size)
        except NotAnImageError as e:
            return str(e)
        except OSError as e:  # gone, unreadable: the reason in the system's words
            return f"cannot be read ({e.strerror or e})"
        images.append((it, self.encoder.preprocess_image(image)))
        return None

    def _encode(self, images: list[tuple[Item, Any]], texts: list[Item]) -> Embedded | None:
        import numpy as np
        import torch

        parts: list[np.ndarray] = []
        if images:
            pixels = torch.stack([pixels for _, pixels in images])
            parts.append(self.encoder.encode_image_tensors(pixels).numpy())
        if texts:
            parts.append(self.encoder.encode_texts([str(t.source) for t in texts]).numpy())
        done = [it for it, _ in images] + texts
        if not done:
            return None
        return Embedded(
            [it.id for it in done],
            np.concatenate(parts).astype(np.float32),
            [it.metadata for it in done],
            [it.source for it in done],
        )
