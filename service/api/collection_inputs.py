"""Request -> vectors for the collections API: the space of a new collection, upsert and
search bodies (JSON or multipart), and embedding their texts and images with the loaded
model. Checks on single values are in contrastkit.service.api.collection_checks; every failure is a
domain error, so the routes stay thin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from fastapi import Request

from contrastkit.service.api.collection_checks import (
    MAX_INDEX_PARAM,
    check_id,
    check_k,
    check_metadata,
    check_source,
    check_space,
    check_vector,
    unit_rows,
)
from contrastkit.service.api.deps import IndexRunner
from contrastkit.service.api.openapi_docs import REF, STRINGS, Form, json_or_multipart
from contrastkit.service.api.payload import (
    holds_rounded_ints,
    is_multipart,
    json_field,
    json_parts,
    list_field,
    read_form,
    read_json,
)
from contrastkit.service.api.request_checks import bad, check_count, check_text
from contrastkit.service.domain_errors import ModelError
from contrastkit.service.index.backend import CollectionHandle
from contrastkit.service.index.filters import Filter, parse_filter
from contrastkit.service.index.types import MAX_DIM, CollectionError, IndexSpec, check_name
from contrastkit.service.responses import finite_output
from contrastkit.service.runtime.served import LoadedModel, ServedModels
from contrastkit.service.schemas.collections import (
    CreateCollectionRequest,
    DeleteItemsRequest,
    ItemIn,
    Query,
    SearchRequest,
    UpsertRequest,
)
from contrastkit.service.settings import Settings
from contrastkit.training.encoders import IMAGE, TEXT

Kind = Literal["text", "image", "vector", "id"]
Source = tuple[Kind, Any]  # ("text", str) | ("image", bytes) | ("vector", list) | ("id", str)
# ids, unit vectors, metadata, sources (one per id; None: no item has one)
Upsert = tuple[list[str], np.ndarray, list[dict[str, Any]], list[str | None] | None]


def collection_space(models: ServedModels, body: CreateCollectionRequest) -> tuple[str, int]:
    """(model_id, dim) of a new collection: the loaded model's unless both are given."""
    check_name(body.name)
    if body.dim is not None and body.dim > MAX_DIM:
        raise bad("invalid_dimension", f"dim {body.dim} is too large: at most {MAX_DIM}")
    if body.model_id is not None and body.dim is not None:
        same = models.in_space(body.model_id)
        enc = same.encoder if same is not None else None
        if enc is not None and body.dim != enc.embed_dim:
            raise bad(
                "wrong_dimension",
                f"model {enc.model_id!r} embeds in {enc.embed_dim} dimensions, not {body.dim}",
            )
        return body.model_id, body.dim
    if body.model_id is None:
        enc = models.default.require().encoder
    else:  # a served model, by id or reference (one served model: the loaded one)
        try:
            enc = models.resolve(body.model_id).encoder
        except ModelError as e:
            if e.code != "model_not_found":
                raise
            raise bad(
                "invalid_request",
                f"model_id {body.model_id!r} is not a loaded model "
                f"({', '.join(repr(m) for m in models.names())}): "
                "give 'dim' too to make a collection of raw vectors",
            ) from None
    if body.dim is not None and body.dim != enc.embed_dim:
        raise bad(
            "wrong_dimension",
            f"dim {body.dim} differs from the loaded model's ({enc.model_id!r}, "
            f"{enc.embed_dim}-d): give 'model_id' too to make a collection of raw vectors",
        )
    return enc.model_id, enc.embed_dim


def index_spec(body: CreateCollectionRequest) -> IndexSpec:
    """The index of a new collection; its integer parameters must fit FAISS's C ints."""
    if body.index is None:
        return IndexSpec()
    for name, value in body.index.model_dump().items():
        if isinstance(value, int) and value > MAX_INDEX_PARAM:
            raise bad("invalid_request", f"index.{name} is {value}; at most {MAX_INDEX_PARAM}")
    return body.index.to_spec()


def check_delete(body: DeleteItemsRequest, s: Settings) -> list[str]:
    check_count(len(body.ids), s.max_items, "ids")
    return body.ids


@dataclass(frozen=True)
class CollectionInputs:
    """Reads upsert and search requests into vectors for one request's collection."""

    models: ServedModels
    settings: Settings
    run_index: IndexRunner

    # -- upsert -------------------------------------------------------------------------
    async def read_upsert(self, request: Request, col: CollectionHandle) -> Upsert:
        """An upsert request (JSON items, or multipart files) -> (ids, unit vectors,
        metadata, sources). Sources come with JSON items only."""
        if is_multipart(request):
            return await self._upsert_form(request, col)
        s = self.settings
        body = await read_json(request, UpsertRequest, non_finite=True)
        if any(holds_rounded_ints(it.metadata) for it in body.items):
            # orjson reads an integer beyond 64 bits as a float: read the body exactly,
            # so that check_metadata refuses it by name rather than store it rounded.
            body = await read_json(request, UpsertRequest, exact=True)
        check_count(len(body.items), s.max_items, "items")
        ids = [check_id(it.id, f"items[{i}].id") for i, it in enumerate(body.items)]
        metadata = [
            check_metadata(it.metadata, f"items[{i}].metadata") for i, it in enumerate(body.items)
        ]
        origins = [check_source(it.source, f"items[{i}].source") for i, it in enumerate(body.items)]
        sources = [_item_source(it) for it in body.items]
        vectors = await self.embed_sources(col, sources, "items")
        return ids, vectors, metadata, origins if any(o is not None for o in origins) else None

    async def _upsert_form(self, request: Request, col: CollectionHandle) -> Upsert:
        s = self.settings
        form = await read_form(request, s.max_items, 2 * s.max_items + 16, ("ids", "metadata"))
        check_count(len(form.files), s.max_items, "files")
        ids = list_field(form.fields, "ids")
        if ids is None:
            ids = [name for name, _ in form.files]
            if not all(ids):
                raise bad("invalid_id", "a file has no filename: send the 'ids' field")
        if len(ids) != len(form.files):
            raise bad("invalid_request", f"{len(ids)} ids for {len(form.files)} files")
        ids = [check_id(id_, f"ids[{i}]") for i, id_ in enumerate(ids)]
        metadata = _form_metadata(json_parts(form.fields, "metadata"), len(ids))
        sources: list[Source] = [("image", blob) for blob in form.blobs]
        return ids, await self.embed_sources(col, sources, "files"), metadata, None

    # -- search -------------------------------------------------------------------------
    async def read_search(
        self, request: Request, col: CollectionHandle
    ) -> tuple[np.ndarray, int, Filter | None]:
        """A search request (JSON queries, or multipart: text fields and image files) ->
        (unit query vectors [q, dim], k, where). Multipart: the texts' queries come first.
        `where` is parsed before anything is embedded ("invalid_filter" names the fault)."""
        s = self.settings
        if is_multipart(request):
            sources, k, where = await self._search_form(request)
        else:
            body = await read_json(request, SearchRequest, non_finite=True)
            k, where = body.k, body.where
            sources = [_query_source(q) for q in body.queries]
        check_k(k, s)
        f = parse_filter(where) if where is not None else None
        check_count(len(sources), s.max_queries, "queries")
        return await self.embed_sources(col, sources, "queries"), k, f

    async def _search_form(self, request: Request) -> tuple[list[Source], int, Any]:
        s = self.settings
        form = await read_form(request, s.max_queries, s.max_queries + 16, ("k", "where", "texts"))
        k_raw = form.fields.get("k", ["10"])
        try:
            k = int(k_raw[-1])
        except ValueError as e:
            raise bad("invalid_k", f"form field 'k' is not an integer: {k_raw[-1]!r}") from e
        where = json_field(form.fields, "where")
        sources: list[Source] = [("text", t) for t in list_field(form.fields, "texts") or []]
        sources += [("image", blob) for blob in form.blobs]
        return sources, k, where

    # -- sources -> vectors -------------------------------------------------------------
    async def embed_sources(
        self, col: CollectionHandle, sources: list[Source], what: str
    ) -> np.ndarray:
        """[(kind, value)] -> unit float32 [n, dim], in order. Vectors and texts are checked
        before anything is embedded; ids are looked up in the collection (`item_not_found`);
        images are admitted, then decoded (base64 too) in the decode pool, before the texts
        are embedded."""
        out = np.empty((len(sources), col.dim), np.float32)
        by_kind: dict[str, list[int]] = {"text": [], "image": [], "id": []}
        for i, (kind, value) in enumerate(sources):
            if kind == "vector":
                out[i] = check_vector(value, col, f"{what}[{i}].vector")
            else:
                by_kind[kind].append(i)
                if kind == "text":
                    check_text(value, self.settings, f"{what}[{i}].text")
        texts, images, ids = by_kind["text"], by_kind["image"], by_kind["id"]
        # the model is needed only now, and only for what it must embed
        text_model = self._model_for(col, TEXT) if texts else None
        image_model = self._model_for(col, IMAGE) if images else None
        if ids:
            out[ids] = await self.run_index(_stored, col, [sources[i][1] for i in ids])
        if image_model is not None:  # before the texts: a bad image (base64, decoding,
            # both in the decode pool after admission) fails before they are embedded
            embedded = await image_model.images([sources[i][1] for i in images], images)
            out[images] = unit_rows(finite_output(embedded, col.model_id), col)
        if text_model is not None:
            embedded = await text_model.texts([sources[i][1] for i in texts])
            out[texts] = unit_rows(finite_output(embedded, col.model_id), col)
        return out

    def _model_for(self, col: CollectionHandle, capability: str) -> LoadedModel:
        """The model that embeds into `col`'s space, with `capability`: the loaded one
        whose id is the collection's model id, else the default, whose vectors must then
        fit the collection (`model_mismatch`). `model_unloaded` when the collection's
        model was unloaded or replaced through the admin API."""
        same = self.models.in_space(col.model_id)
        gone = self.models.gone(col.model_id) if same is None else None
        if gone is not None:
            raise ModelError(
                "model_unloaded",
                f"collection {col.name!r} holds vectors of model {col.model_id!r}, but {gone}: "
                "load it again (POST /v1/admin/models) to send this collection texts or "
                "images; raw vectors and stored ids still work",
            )
        model = same.require(capability) if same else self.models.default.require(capability)
        check_space(model.encoder, col)
        return model


def _form_metadata(parts: list[Any] | None, n: int) -> list[dict[str, Any]]:
    """The multipart 'metadata' parts, read as JSON -> n metadata dicts. One JSON object per
    file: a part each (OpenAPI's multipart arrays), or one part holding a JSON array."""
    if parts is None:
        return [{} for _ in range(n)]
    values = parts[0] if len(parts) == 1 and isinstance(parts[0], list) else parts
    if len(values) != n:
        raise bad(
            "invalid_metadata",
            f"form field 'metadata' holds {len(values)} objects for {n} files: "
            "send one JSON object per file (a part each, or one JSON array)",
        )
    return [check_metadata(m, f"metadata[{i}]") for i, m in enumerate(values)]


def _stored(col: CollectionHandle, ids: list[str]) -> np.ndarray:
    rows = []
    for id_ in ids:
        item = col.get(id_)
        if item is None or item.vector is None:
            raise CollectionError("item_not_found", f"no item {id_!r} in collection {col.name!r}")
        rows.append(item.vector)
    return np.stack(rows)


def _item_source(item: ItemIn) -> Source:
    if item.text is not None:
        return ("text", item.text)
    if item.image is not None:
        return ("image", item.image)
    return ("vector", item.vector)


def _query_source(q: Query) -> Source:
    for kind in ("text", "image", "vector", "id"):
        value = getattr(q, kind)
        if value is not None:
            return (kind, value)  # type: ignore[return-value]
    raise AssertionError("Query validates exactly one source")


UPSERT_DOC = json_or_multipart(
    UpsertRequest,
    Form(
        "UpsertForm",
        {
            "ids": {
                "type": "array",
                "items": {"type": "string"},
                "description": "one per file, in order (default: the files' names)",
            },
            "metadata": {
                "type": "array",
                "items": {"type": "object"},
                "description": "one JSON object per file, in order: a part each, or one "
                "part holding a JSON array of them",
            },
        },
        closed=True,
        required=("files",),
        json=("metadata",),
    ),
)
SEARCH_DOC = json_or_multipart(
    SearchRequest,
    Form(
        "SearchForm",
        {
            "k": {"type": "integer"},
            "where": {"$ref": REF.format(model="Filter")},
            "texts": STRINGS,
        },
        closed=True,
        json=("where",),
        # a query at least: a text or a file (an empty array sends no part at all)
        extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"minItems": 1}}}
                for name in ("texts", "files")
            ]
        },
    ),
)
