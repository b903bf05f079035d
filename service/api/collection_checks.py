"""Checks on what the collections API is sent: k, ids, metadata, raw vectors, and whether
the loaded model's vectors fit a collection. Each failure is a domain error."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.api.request_checks import bad, unencodable_at
from service.index.backend import CollectionHandle
from service.index.types import MAX_ID_CHARS, CollectionError
from service.settings import Settings
from training.encoders import Encoder

MAX_METADATA_DEPTH = 32
MAX_DIM = 65_536  # the largest collection dimension (real embedding models: 32 to 4096)
MAX_INDEX_PARAM = 2**31 - 1  # FAISS takes its index parameters as C ints
_INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson writes back


def check_k(k: int, s: Settings) -> int:
    if not 1 <= k <= s.max_k:
        raise bad("invalid_k", f"k must be between 1 and {s.max_k}, got {k}")
    return k


def check_id(id_: Any, where: str) -> str:
    if not isinstance(id_, str) or not 1 <= len(id_) <= MAX_ID_CHARS:
        raise bad("invalid_id", f"{where} must be a string of 1-{MAX_ID_CHARS} characters")
    if unencodable_at(id_) is not None:
        raise bad("invalid_id", f"{where} is not valid Unicode (a lone surrogate)")
    return id_


def check_metadata(value: Any, where: str) -> dict[str, Any]:
    """A JSON object (None -> {}) that reads back as written: finite numbers, 64-bit
    integers, valid Unicode, nested at most MAX_METADATA_DEPTH deep. A refusal names the
    value's place, e.g. `items[0].metadata.size[2]`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad("invalid_metadata", f"{where} must be a JSON object, got {type(value).__name__}")
    stack: list[tuple[Any, int, str]] = [(value, 1, where)]
    while stack:
        v, depth, at = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise bad("invalid_metadata", f"{where} is nested deeper than {MAX_METADATA_DEPTH}")
        if isinstance(v, dict):
            for key, child in v.items():
                if unencodable_at(key) is not None:
                    raise bad("invalid_metadata", f"{at} has a key that is not valid Unicode")
                stack.append((child, depth + 1, f"{at}.{key}"))
        elif isinstance(v, list):
            stack.extend((child, depth + 1, f"{at}[{i}]") for i, child in enumerate(v))
        else:
            _check_scalar(v, at)
    return value


def _check_scalar(v: Any, where: str) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise bad("invalid_metadata", f"{where} is {v}: JSON numbers must be finite")
    if isinstance(v, int) and not isinstance(v, bool) and not _INT_RANGE[0] <= v <= _INT_RANGE[1]:
        raise bad(
            "invalid_metadata",
            f"{where} is an integer beyond 64 bits (from {_INT_RANGE[0]} to {_INT_RANGE[1]}): "
            "send it as a string",
        )
    if isinstance(v, str) and unencodable_at(v) is not None:
        raise bad("invalid_metadata", f"{where} is a string that is not valid Unicode")


def check_vector(values: Sequence[float], col: CollectionHandle, where: str) -> np.ndarray:
    """Raw floats -> unit float32 [dim]: right length, finite, not all zeros."""
    v = np.asarray(values, np.float64)
    if v.shape != (col.dim,):
        raise bad(
            "wrong_dimension",
            f"{where} has {v.size} values; collection {col.name!r} holds {col.dim}-d vectors",
        )
    if not np.isfinite(v).all():
        raise bad("invalid_vector", f"{where} contains NaN or infinity")
    peak = np.abs(v).max()
    if peak == 0:
        raise bad("invalid_vector", f"{where} is all zeros: it has no direction")
    v = v / peak  # no overflow in the norm of huge values, no underflow of tiny ones
    return (v / np.linalg.norm(v)).astype(np.float32)


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
