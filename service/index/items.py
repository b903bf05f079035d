"""What an item may be: the one set of rules for every way data enters a collection.

The HTTP API (contrastkit.service.api.collection_checks), the client (through the API), `contrastive
index add`, `contrastive index import` and a copy between backends all come through here:
the API and import check each item up front to name its place in their input, and
every backend checks each upsert again (`contrastkit.service.index.backend.check_batch`), so nothing
reaches a collection that these rules refuse.

- id: a string of 1-MAX_ID_CHARS characters, valid Unicode (no lone surrogate), no NUL
  (U+0000), which would cut the id short in anything that reads C strings;
- metadata: a JSON object (None means {}) that reads back exactly as written: string keys,
  JSON values only, finite numbers, integers within 64 bits, valid Unicode, nested at most
  MAX_METADATA_DEPTH deep;
- source (optional): where the item came from, a path, a URI or the text itself, so that
  it can be embedded again by another model; a string of 1-MAX_SOURCE_BYTES bytes of
  UTF-8, no NUL. None means the item has none;
- vector: `dim` finite numbers, not all zero, stored at unit length. A vector within
  UNIT_TOLERANCE of unit length is kept as given (bit for bit: an export re-imports
  exactly); any other is scaled to unit length, as the API has always done. Scores are
  cosines only if every stored vector is a unit vector.

Each refusal is an ItemError whose message is "<where> <reason>": the reason is the same
on every path, only the place differs (`items[3].id`, `ids[3]`, `line 5 (item 4): id`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from contrastkit.service.domain_errors import ErrorCode
from contrastkit.service.index.types import MAX_ID_CHARS, CollectionError

MAX_METADATA_DEPTH = 32
# a path, a URI or a caption fits; a whole document does not belong in every search hit
MAX_SOURCE_BYTES = 2048
INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson writes back
# |norm - 1| up to this is unit length already: a float32 vector normalised in float32
# is off by ~1e-7, and re-normalising it would move its last bits for nothing.
UNIT_TOLERANCE = 1e-5
_JSON_SCALARS = (str, int, float, bool, type(None))


class ItemError(CollectionError):
    """An item refused: code "invalid_id", "invalid_metadata", "invalid_source",
    "invalid_vector" or "wrong_dimension".

    `where` names the place ("items[0].metadata.size"), `reason` what is wrong with it
    ("is nan: JSON numbers must be finite"); the message is both."""

    def __init__(self, code: ErrorCode, where: str, reason: str) -> None:
        super().__init__(code, f"{where} {reason}")
        self.where = where
        self.reason = reason


# -- ids ------------------------------------------------------------------------------------
def check_id(id_: Any, where: str) -> str:
    """An item id, as it will be stored; ItemError("invalid_id") otherwise."""
    if not isinstance(id_, str) or not 1 <= len(id_) <= MAX_ID_CHARS:
        raise ItemError("invalid_id", where, f"must be a string of 1-{MAX_ID_CHARS} characters")
    if unencodable_at(id_) is not None:
        raise ItemError("invalid_id", where, "is not valid Unicode (a lone surrogate)")
    if "\x00" in id_:
        raise ItemError("invalid_id", where, "contains a NUL character (U+0000)")
    return id_


def unencodable_at(s: str) -> int | None:
    """Where `s` stops being encodable as UTF-8 (a lone surrogate, which JSON's \\ud800
    escapes and undecodable file names let in), or None when all of it is valid Unicode."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


# -- sources ------------------------------------------------------------------------------
def check_source(value: Any, where: str) -> str | None:
    """An item's source as it will be stored (None: it has none); ItemError
    ("invalid_source") otherwise."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ItemError("invalid_source", where, "must be a non-empty string or null")
    if unencodable_at(value) is not None:
        raise ItemError("invalid_source", where, "is not valid Unicode (a lone surrogate)")
    if "\x00" in value:
        raise ItemError("invalid_source", where, "contains a NUL character (U+0000)")
    size = len(value.encode("utf-8"))
    if size > MAX_SOURCE_BYTES:
        raise ItemError(
            "invalid_source",
            where,
            f"is {size} bytes of UTF-8: at most {MAX_SOURCE_BYTES} (store a path or URI "
            "to a long text, not the text)",
        )
    return value


# -- metadata -------------------------------------------------------------------------------
def check_metadata(value: Any, where: str) -> dict[str, Any]:
    """A JSON object (None -> {}) that reads back as written; ItemError("invalid_metadata")
    naming the value's place otherwise, e.g. `items[0].metadata.size[2]`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ItemError("invalid_metadata", where, f"must be a JSON object, got {_kind(value)}")
    # iterative: a deeply nested value must not exhaust Python's stack before it is refused
    stack: list[tuple[Any, int, str]] = [(value, 1, where)]
    while stack:
        v, depth, at = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise ItemError(
                "invalid_metadata", where, f"is nested deeper than {MAX_METADATA_DEPTH}"
            )
        if isinstance(v, dict):
            for key, child in v.items():
                _check_key(key, at)
                stack.append((child, depth + 1, f"{at}.{key}"))
        elif isinstance(v, list):
            stack.extend((child, depth + 1, f"{at}[{i}]") for i, child in enumerate(v))
        else:
            _check_scalar(v, at)
    return value


def _check_key(key: Any, at: str) -> None:
    if not isinstance(key, str):  # JSON would turn it into a string: it would not read back
        raise ItemError("invalid_metadata", at, f"has a key that is not a string ({key!r})")
    if unencodable_at(key) is not None:
        raise ItemError("invalid_metadata", at, "has a key that is not valid Unicode")


def _check_scalar(v: Any, where: str) -> None:
    if not isinstance(v, _JSON_SCALARS):  # reachable from Python callers only, not JSON
        raise ItemError(
            "invalid_metadata",
            where,
            f"is a {_kind(v)}: metadata holds JSON values only (objects, arrays, strings, "
            "numbers, true, false, null)",
        )
    if isinstance(v, float) and not math.isfinite(v):
        raise ItemError("invalid_metadata", where, f"is {v}: JSON numbers must be finite")
    if isinstance(v, int) and not isinstance(v, bool) and not INT_RANGE[0] <= v <= INT_RANGE[1]:
        raise ItemError(
            "invalid_metadata",
            where,
            f"is an integer beyond 64 bits (from {INT_RANGE[0]} to {INT_RANGE[1]}): "
            "send it as a string",
        )
    if isinstance(v, str) and unencodable_at(v) is not None:
        raise ItemError("invalid_metadata", where, "is a string that is not valid Unicode")


def _kind(v: Any) -> str:
    return type(v).__name__


# -- vectors --------------------------------------------------------------------------------
def check_vector(values: Any, dim: int, where: str, collection: str) -> npt.NDArray[np.float32]:
    """Numbers -> the unit float32 [dim] vector to store; ItemError("wrong_dimension" or
    "invalid_vector") otherwise."""
    v = np.asarray(values, np.float64)
    if v.shape != (dim,):
        raise ItemError(
            "wrong_dimension",
            where,
            f"has {v.size} values; collection {collection!r} holds {dim}-d vectors",
        )
    return unit_rows(v[None, :], lambda _: where)[0]


def unit_rows(vectors: Any, where: Callable[[int], str]) -> npt.NDArray[np.float32]:
    """[n, dim] numbers -> unit float32 [n, dim]: rows within UNIT_TOLERANCE of unit length
    as given, others scaled to it. ItemError("invalid_vector") for the first row holding
    NaN or infinity, or all zeros; `where(i)` names row i."""
    v = np.asarray(vectors, np.float64)
    finite = np.isfinite(v).all(axis=1)
    if not finite.all():
        raise ItemError("invalid_vector", where(_first(~finite)), "contains NaN or infinity")
    peak = np.abs(v).max(axis=1, initial=0.0, keepdims=True)  # [n, 1]
    if (peak == 0).any():
        raise ItemError(
            "invalid_vector", where(_first(peak[:, 0] == 0)), "is all zeros: it has no direction"
        )
    # divided by the peak first: no overflow in the norm of huge values, no underflow of tiny
    scaled = v / peak
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)  # [n, 1]
    unit = np.abs(norms * peak - 1) <= UNIT_TOLERANCE  # [n, 1]
    return np.where(unit, v, scaled / norms).astype(np.float32)


def _first(mask: Any) -> int:
    """The index of the first True in a boolean [n] array."""
    return int(np.flatnonzero(mask)[0])
