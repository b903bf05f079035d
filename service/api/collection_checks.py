"""Checks on what the collections API is sent: k, ids, metadata, raw vectors, and whether
the loaded model's vectors fit a collection. Each failure is a domain error."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from contrastkit.service.api.request_checks import bad
from contrastkit.service.index import items
from contrastkit.service.index.backend import CollectionHandle
from contrastkit.service.index.types import CollectionError
from contrastkit.service.settings import Settings
from contrastkit.training.encoders import Encoder

MAX_INDEX_PARAM = 2**31 - 1  # FAISS takes its index parameters as C ints


def check_k(k: int, s: Settings) -> int:
    if not 1 <= k <= s.max_k:
        raise bad("invalid_k", f"k must be between 1 and {s.max_k}, got {k}")
    return k


# The item rules are contrastkit.service.index.items, shared with every other path into a
# collection; here their refusals become request errors (422), with the same codes and messages.
def check_id(id_: Any, where: str) -> str:
    """A valid item id (1-256 characters, valid Unicode, no NUL); "invalid_id" otherwise."""
    with _as_request_error():
        return items.check_id(id_, where)


def check_metadata(value: Any, where: str) -> dict[str, Any]:
    """A JSON object (None -> {}) that reads back as written: finite numbers, 64-bit
    integers, valid Unicode, nested at most items.MAX_METADATA_DEPTH deep. A refusal names the
    value's place, e.g. `items[0].metadata.size[2]`."""
    with _as_request_error():
        return items.check_metadata(value, where)


def check_source(value: Any, where: str) -> str | None:
    """An item's source (None: none): 1-items.MAX_SOURCE_BYTES bytes of UTF-8, no NUL;
    "invalid_source" naming its place otherwise."""
    with _as_request_error():
        return items.check_source(value, where)


def check_vector(values: Sequence[float], col: CollectionHandle, where: str) -> np.ndarray:
    """Raw floats -> unit float32 [dim]: right length, finite, not all zeros."""
    with _as_request_error():
        return items.check_vector(values, col.dim, where, col.name)


@contextmanager
def _as_request_error() -> Iterator[None]:
    try:
        yield
    except items.ItemError as e:
        raise bad(e.code, e.message) from None


def check_space(enc: Encoder, col: CollectionHandle) -> None:
    """Texts and images can go only into a collection of the loaded model's space."""
    if col.model_id != enc.model_id or col.dim != enc.embed_dim:
        raise CollectionError(
            "model_mismatch",
            f"collection {col.name!r} holds vectors of model {col.model_id!r} ({col.dim}-d), "
            f"but this server embeds with {enc.model_id!r} ({enc.embed_dim}-d): "
            "send raw vectors, or use a collection made for this model",
        )


def unit_rows(emb: Any, col: CollectionHandle) -> np.ndarray:
    """The model's [n, d] output -> unit float32 rows of the collection's dimension."""
    arr = np.asarray(emb.numpy() if hasattr(emb, "numpy") else emb, np.float32)
    if arr.ndim != 2 or arr.shape[1] != col.dim:
        raise CollectionError(
            "model_mismatch",
            f"the model gave {arr.shape[-1]}-d vectors; collection {col.name!r} is {col.dim}-d",
        )
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norms > 0, norms, 1)
