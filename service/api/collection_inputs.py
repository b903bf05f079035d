"""Request -> vectors for the collections API: parsing (JSON or multipart), every check on
items and queries, and embedding texts and images with the loaded model.

Each failure is an ApiError (4xx, one error shape); the routes stay thin.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import orjson
from fastapi import Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from service.api.payload import is_multipart, list_field, require_json, validate_body
from service.api.validate import check_text
from service.errors import ApiError
from service.index.collection import Collection
from service.index.schemas import (
    CreateCollectionRequest,
    DeleteItemsRequest,
    ItemIn,
    Query,
    SearchRequest,
    UpsertRequest,
)
from service.index.store import CollectionStore
from service.index.types import MAX_ID_CHARS, CollectionError, IndexSpec, check_name
from service.runtime.images import decode_base64_image
from service.settings import Settings
from service.state import ServiceState
from training.encoders import IMAGE, TEXT

M = TypeVar("M", bound=BaseModel)
Kind = Literal["text", "image", "vector", "id"]
Source = tuple[Kind, Any]  # ("text", str) | ("image", bytes) | ("vector", list) | ("id", str)
MAX_METADATA_DEPTH = 32
_INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson writes back


def _bad(code: str, message: str) -> ApiError:
    return ApiError(422, code, message)


# -- the store and the collection ------------------------------------------------------------
def require_store(state: ServiceState) -> CollectionStore:
    if state.store is None:
        raise ApiError(503, "store_unavailable", "the collection store is not open")
    return state.store


async def get_collection(state: ServiceState, name: str) -> Collection:
    store = require_store(state)
    return await state.run_index(store.get, name)


def collection_space(state: ServiceState, body: CreateCollectionRequest) -> tuple[str, int]:
    """(model_id, dim) of a new collection: the loaded model's unless both are given."""
    check_name(body.name)
    if body.model_id is not None and body.dim is not None:
        enc = state.encoder
        if enc is not None and body.model_id == enc.model_id and body.dim != enc.embed_dim:
            raise _bad(
                "wrong_dimension",
                f"model {enc.model_id!r} embeds in {enc.embed_dim} dimensions, not {body.dim}",
            )
        return body.model_id, body.dim
    enc = state.require_encoder()
    if body.model_id is not None and body.model_id != enc.model_id:
        raise _bad(
            "invalid_request",
            f"model_id {body.model_id!r} is not the loaded model ({enc.model_id!r}): "
            "give 'dim' too to make a collection of raw vectors",
        )
    if body.dim is not None and body.dim != enc.embed_dim:
        raise _bad(
            "wrong_dimension",
            f"dim {body.dim} differs from the loaded model's ({enc.model_id!r}, "
            f"{enc.embed_dim}-d): give 'model_id' too to make a collection of raw vectors",
        )
    return enc.model_id, enc.embed_dim


def index_spec(body: CreateCollectionRequest) -> IndexSpec:
    return body.index.to_spec() if body.index is not None else IndexSpec()


# -- bodies ---------------------------------------------------------------------------------
async def parse_body(request: Request, model: type[M]) -> M:
    """JSON body -> model. Bodies orjson refuses (NaN, Infinity, 1e999) are read by the
    standard library, so a non-finite vector gets its own clear error, not 'invalid JSON'."""
    require_json(request)
    body = await request.body()
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError):
            raise ApiError(422, "invalid_json", f"the body is not valid JSON: {e}") from e
    return validate_body(model, raw)


async def read_form(
    request: Request, max_files: int, fields_allowed: Sequence[str], max_fields: int
) -> tuple[list[tuple[str, bytes]], dict[str, list[str]]]:
    """multipart/form-data -> ([(filename, content)] in order, other fields by name)."""
    form = await request.form(max_files=max_files + 1, max_fields=max_fields)
    files: list[tuple[str, bytes]] = []
    fields: dict[str, list[str]] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((value.filename or "", await value.read()))
            elif name == "files":
                raise _bad("invalid_request", "each 'files' part must be a file with a filename")
            elif name in fields_allowed:
                fields.setdefault(name, []).append(value)
            else:
                raise _bad(
                    "invalid_request",
                    f"unknown form field {name!r}; expected files and "
                    + ", ".join(repr(f) for f in fields_allowed),
                )
    finally:
        await form.close()
    return files, fields


def _json_field(fields: dict[str, list[str]], name: str) -> Any:
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise _bad("invalid_request", f"form field {name!r} is given {len(values)} times")
    try:
        return orjson.loads(values[0])
    except orjson.JSONDecodeError as e:
        raise _bad("invalid_request", f"form field {name!r} is not valid JSON: {e}") from e


# -- checks -----------------------------------------------------------------------------------
def check_count(n: int, limit: int, what: str) -> None:
    if n == 0:
        raise _bad("empty_input", f"'{what}' is empty: send at least one")
    if n > limit:
        raise _bad("too_many_items", f"{n} {what} in one request; the limit is {limit}")


def check_k(k: int, s: Settings) -> int:
    if not 1 <= k <= s.max_k:
        raise _bad("invalid_k", f"k must be between 1 and {s.max_k}, got {k}")
    return k


def check_id(id_: Any, where: str) -> str:
    if not isinstance(id_, str) or not 1 <= len(id_) <= MAX_ID_CHARS:
        raise _bad("invalid_id", f"{where} must be a string of 1-{MAX_ID_CHARS} characters")
    if not _encodable(id_):
        raise _bad("invalid_id", f"{where} is not valid Unicode (a lone surrogate)")
    return id_


def check_metadata(value: Any, where: str) -> dict[str, Any]:
    """A JSON object (None -> {}) that reads back as written: finite numbers, 64-bit
    integers, valid Unicode, nested at most MAX_METADATA_DEPTH deep."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("invalid_metadata", f"{where} must be a JSON object, got {type(value).__name__}")
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise _bad("invalid_metadata", f"{where} is nested deeper than {MAX_METADATA_DEPTH}")
        if isinstance(v, dict):
            for key, child in v.items():
                if not _encodable(key):
                    raise _bad("invalid_metadata", f"{where} has a key that is not valid Unicode")
                stack.append((child, depth + 1))
        elif isinstance(v, list):
            stack.extend((child, depth + 1) for child in v)
        elif isinstance(v, float) and not math.isfinite(v):
            raise _bad("invalid_metadata", f"{where} holds {v}: JSON numbers must be finite")
        elif isinstance(v, int) and not isinstance(v, bool):
            if not _INT_RANGE[0] <= v <= _INT_RANGE[1]:
                raise _bad("invalid_metadata", f"{where} holds an integer beyond 64 bits")
        elif isinstance(v, str) and not _encodable(v):
            raise _bad("invalid_metadata", f"{where} holds a string that is not valid Unicode")
    return value


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_vector(values: Sequence[float], col: Collection, where: str) -> np.ndarray:
    """Raw floats -> unit float32 [dim]: right length, finite, not all zeros."""
    v = np.asarray(values, np.float64)
    if v.shape != (col.dim,):
        raise _bad(
            "wrong_dimension",
            f"{where} has {v.size} values; collection {col.name!r} holds {col.dim}-d vectors",
        )
    if not np.isfinite(v).all():
        raise _bad("invalid_vector", f"{where} contains NaN or infinity")
    peak = np.abs(v).max()
    if peak == 0:
        raise _bad("invalid_vector", f"{where} is all zeros: it has no direction")
    v = v / peak  # no overflow in the norm of huge values, no underflow of tiny ones
    return (v / np.linalg.norm(v)).astype(np.float32)


def check_model(state: ServiceState, col: Collection, capability: str) -> None:
    """Texts and images can go only into a collection of the loaded model's space."""
    enc = state.require_encoder(capability=capability)
    if col.model_id != enc.model_id or col.dim != enc.embed_dim:
        raise ApiError(
            409,
            "model_mismatch",
            f"collection {col.name!r} holds vectors of model {col.model_id!r} ({col.dim}-d), "
            f"but this server embeds with {enc.model_id!r} ({enc.embed_dim}-d): "
            "send raw vectors, or use a collection made for this model",
        )


# -- sources -> vectors ------------------------------------------------------------------------
async def embed_sources(
    state: ServiceState, col: Collection, sources: list[Source], what: str
) -> np.ndarray:
    """[(kind, value)] -> unit float32 [n, dim], in order. Everything is checked before
    anything is embedded; ids are looked up in the collection (404 when absent)."""
    s = state.settings
    out = np.empty((len(sources), col.dim), np.float32)
    by_kind: dict[str, list[int]] = {"text": [], "image": [], "id": []}
    for i, (kind, value) in enumerate(sources):
        if kind == "vector":
            out[i] = check_vector(value, col, f"{what}[{i}].vector")
        else:
            by_kind[kind].append(i)
            if kind == "text":
                check_text(value, s, f"{what}[{i}].text")
    texts, images, ids = by_kind["text"], by_kind["image"], by_kind["id"]
    if texts:
        check_model(state, col, TEXT)
    if images:
        check_model(state, col, IMAGE)
    blobs = [
        sources[i][1] if isinstance(sources[i][1], bytes) else decode_base64_image(sources[i][1], i)
        for i in images
    ]
    if ids:
        out[ids] = await state.run_index(_stored, col, [sources[i][1] for i in ids])
    if texts:
        out[texts] = _unit(await state.embed_texts([sources[i][1] for i in texts]), col)
    if images:
        out[images] = _unit(await state.embed_image_bytes(blobs), col)
    return out


def _stored(col: Collection, ids: list[str]) -> np.ndarray:
    rows = []
    for id_ in ids:
        got = col.get(id_)
        if got is None:
            raise CollectionError(
                404, "item_not_found", f"no item {id_!r} in collection {col.name!r}"
            )
        rows.append(got[0])
    return np.stack(rows)


def _unit(emb: Any, col: Collection) -> np.ndarray:
    arr = np.asarray(emb.numpy() if hasattr(emb, "numpy") else emb, np.float32)
    if arr.ndim != 2 or arr.shape[1] != col.dim:
        raise ApiError(
            409,
            "model_mismatch",
            f"the model gave {arr.shape[-1]}-d vectors; collection {col.name!r} is {col.dim}-d",
        )
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norms > 0, norms, 1)


# -- upsert -------------------------------------------------------------------------------------
async def read_upsert(
    request: Request, state: ServiceState, col: Collection
) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
    """An upsert request (JSON items, or multipart files) -> (ids, unit vectors, metadata)."""
    s = state.settings
    if is_multipart(request):
        files, fields = await read_form(
            request, s.max_items, ("ids", "metadata"), 2 * s.max_items + 16
        )
        check_count(len(files), s.max_items, "files")
        ids = list_field(fields, "ids")
        if ids is None:
            ids = [name for name, _ in files]
            if not all(ids):
                raise _bad("invalid_id", "a file has no filename: send the 'ids' field")
        if len(ids) != len(files):
            raise _bad("invalid_request", f"{len(ids)} ids for {len(files)} files")
        ids = [check_id(id_, f"ids[{i}]") for i, id_ in enumerate(ids)]
        meta_raw = _json_field(fields, "metadata")
        if meta_raw is None:
            metadata: list[dict[str, Any]] = [{} for _ in ids]
        elif not isinstance(meta_raw, list) or len(meta_raw) != len(ids):
            raise _bad(
                "invalid_metadata",
                f"form field 'metadata' must be a JSON array of {len(ids)} objects",
            )
        else:
            metadata = [check_metadata(m, f"metadata[{i}]") for i, m in enumerate(meta_raw)]
        sources: list[Source] = [("image", blob) for _, blob in files]
        return ids, await embed_sources(state, col, sources, "files"), metadata

    body = await parse_body(request, UpsertRequest)
    check_count(len(body.items), s.max_items, "items")
    ids = [check_id(it.id, f"items[{i}].id") for i, it in enumerate(body.items)]
    metadata = [
        check_metadata(it.metadata, f"items[{i}].metadata") for i, it in enumerate(body.items)
    ]
    sources = [_item_source(it) for it in body.items]
    return ids, await embed_sources(state, col, sources, "items"), metadata


def _item_source(item: ItemIn) -> Source:
    if item.text is not None:
        return ("text", item.text)
    if item.image is not None:
        return ("image", item.image)
    return ("vector", item.vector)


def check_delete(body: DeleteItemsRequest, s: Settings) -> list[str]:
    check_count(len(body.ids), s.max_items, "ids")
    return body.ids


# -- search -------------------------------------------------------------------------------------
async def read_search(
    request: Request, state: ServiceState, col: Collection
) -> tuple[np.ndarray, int, dict[str, Any] | None]:
    """A search request (JSON queries, or multipart: text fields and image files) ->
    (unit query vectors [q, dim], k, where). Multipart: the texts' queries come first."""
    s = state.settings
    if is_multipart(request):
        files, fields = await read_form(
            request, s.max_queries, ("k", "where", "texts"), s.max_queries + 16
        )
        k_raw = fields.get("k", ["10"])
        try:
            k = int(k_raw[-1])
        except ValueError as e:
            raise _bad("invalid_k", f"form field 'k' is not an integer: {k_raw[-1]!r}") from e
        where = _json_field(fields, "where")
        texts = list_field(fields, "texts") or []
        sources: list[Source] = [("text", t) for t in texts]
        sources += [("image", blob) for _, blob in files]
    else:
        body = await parse_body(request, SearchRequest)
        k, where = body.k, body.where
        sources = [_query_source(q) for q in body.queries]
    check_k(k, s)
    if where is not None and not isinstance(where, dict):
        raise _bad("invalid_request", "'where' must be a JSON object of field: value")
    check_count(len(sources), s.max_queries, "queries")
    return await embed_sources(state, col, sources, "queries"), k, where or None


def _query_source(q: Query) -> Source:
    for kind in ("text", "image", "vector", "id"):
        value = getattr(q, kind)
        if value is not None:
            return (kind, value)  # type: ignore[return-value]
    raise AssertionError("Query validates exactly one source")


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """A pydantic JSON schema with its "#/$defs/..." references written out in place."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _body_doc(model: type[BaseModel], form: dict[str, Any]) -> dict[str, Any]:
    """openapi_extra documenting both accepted bodies (JSON, and multipart with files)."""
    schema = model.model_json_schema()
    files = {"type": "array", "items": {"type": "string", "format": "binary"}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline(schema, schema.get("$defs", {}))},
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {"files": files, **form}}
                },
            },
        }
    }


_STRINGS = {"type": "array", "items": {"type": "string"}}
UPSERT_DOC = _body_doc(
    UpsertRequest,
    {"ids": _STRINGS, "metadata": {"type": "string", "description": "JSON array of objects"}},
)
SEARCH_DOC = _body_doc(
    SearchRequest,
    {
        "k": {"type": "integer"},
        "where": {"type": "string", "description": "JSON object"},
        "texts": _STRINGS,
    },
)
