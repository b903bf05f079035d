"""/v1/collections: named, durable collections of vectors, and similarity search over them.

Every `{name}` of an item or search route may be an alias (/v1/aliases): the collection
is resolved once, when the request starts (deps.named_collection), and the whole request
is served by it, whatever an alias switch does meanwhile.

Inputs become vectors in contrastkit.service.api.collection_inputs; the store
(contrastkit.service.index) blocks on fsync, so every call into it runs in the index pool
(IndexDep). Each route's signature says what it uses: the collection of the path, the store, the
model only when asked.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.convertors import PathConvertor, register_url_convertor

from contrastkit.service.api import collection_inputs as inputs
from contrastkit.service.api.deps import (
    CollectionDep,
    IndexDep,
    ModelsDep,
    SettingsDep,
    State,
    StoreDep,
    WriteDep,
    watch_disconnect,
)
from contrastkit.service.api.openapi_docs import RESERVED_ITEM_PATH, error_responses
from contrastkit.service.api.payload import require_json_dep
from contrastkit.service.api.routes import refusing_router
from contrastkit.service.index.duplicates import DuplicateQuery, find_duplicates
from contrastkit.service.index.filters import parse_filter
from contrastkit.service.index.types import CollectionError, Hit
from contrastkit.service.responses import FastJSON
from contrastkit.service.schemas.collections import (
    CollectionInfoModel,
    CollectionList,
    CreateCollectionRequest,
    DeletedCollection,
    DeleteItemsRequest,
    DeleteItemsResponse,
    ItemOut,
    SearchResponse,
    UpsertResponse,
)
from contrastkit.service.schemas.duplicates import DuplicatesRequest, DuplicatesResponse

router = APIRouter(
    prefix="/v1/collections", tags=["collections"], dependencies=[Depends(watch_disconnect)]
)
# What a replica with `collections` off mounts instead: every collection call, whatever its
# body, is refused before anything is read.
disabled_router = refusing_router(
    "/v1/collections",
    "collections_disabled",
    "this replica serves no collections (setting collections=false); send "
    "/v1/collections requests to the replica that owns them",
)
JSON_ONLY = [Depends(require_json_dep)]


class ItemIdConvertor(PathConvertor):
    """An item id in a path: anything, "/" included (ids are often file paths), except the
    literal `delete`. /items/delete is the path of the delete operation for every method,
    as OpenAPI matches a concrete path before a templated one: GET or OPTIONS there
    answer 405 with `Allow: POST`, which is what the document says, rather than read an
    item named "delete" (such an item is still found by search, `{"id": "delete"}`, and
    deleted by POST /items/delete; only GET cannot name it)."""

    regex = rf"(?!{re.escape(RESERVED_ITEM_PATH)}\Z).*"


register_url_convertor("item_id", ItemIdConvertor())


async def _inputs(
    models: ModelsDep, settings: SettingsDep, run: IndexDep
) -> inputs.CollectionInputs:
    return inputs.CollectionInputs(models, settings, run)


# Reads upsert and search bodies into vectors (the model is checked only if they need it).
InputsDep = Annotated[inputs.CollectionInputs, Depends(_inputs)]


@router.post(
    "",
    status_code=201,
    response_model=CollectionInfoModel,
    dependencies=JSON_ONLY,
    summary="Create a collection",
)
async def create_collection(
    body: CreateCollectionRequest, models: ModelsDep, store: StoreDep, run: IndexDep
) -> FastJSON:
    model_id, dim = inputs.collection_space(models, body)
    info = await run(store.create, body.name, model_id, dim, inputs.index_spec(body))
    return FastJSON(info.to_dict(), status_code=201)


@router.get("", response_model=CollectionList, summary="List the collections")
async def list_collections(store: StoreDep, run: IndexDep) -> FastJSON:
    infos = await run(store.list)
    return FastJSON({"collections": [i.to_dict() for i in infos]})


@router.get("/{name}", response_model=CollectionInfoModel, summary="Describe a collection")
async def describe_collection(col: CollectionDep, state: State, run: IndexDep) -> FastJSON:
    info = (await run(col.info)).to_dict()
    migration = state.migrations.about(col.name)
    return FastJSON(info if migration is None else {**info, "migration": migration.to_dict()})


@router.delete(
    "/{name}",
    response_model=DeletedCollection,
    summary="Delete a collection",
    description="By its name, not an alias's (409 `alias_conflict`); refused while an "
    "alias points to it (409 `collection_aliased`, naming the aliases).",
)
async def delete_collection(name: str, store: StoreDep, run: IndexDep) -> FastJSON:
    await run(store.drop, name)
    return FastJSON({"deleted": name})


@router.post(
    "/{name}/items",
    response_model=UpsertResponse,
    openapi_extra=inputs.UPSERT_DOC,
    summary="Add or replace items (texts, images or raw vectors); durable when answered",
)
async def upsert_items(
    request: Request, col: CollectionDep, read: InputsDep, write: WriteDep, run: IndexDep
) -> FastJSON:
    ids, vectors, metadata, sources = await read.read_upsert(request, col)
    n = await write(col.upsert, ids, vectors, metadata, sources)
    return FastJSON({"upserted": n, "count": await run(col.count)})


@router.post(
    "/{name}/items/delete",
    response_model=DeleteItemsResponse,
    dependencies=JSON_ONLY,
    summary="Delete items by id (unknown ids are ignored)",
)
async def delete_items(
    body: DeleteItemsRequest,
    col: CollectionDep,
    settings: SettingsDep,
    write: WriteDep,
    run: IndexDep,
) -> FastJSON:
    n = await write(col.delete, inputs.check_delete(body, settings))
    return FastJSON({"deleted": n, "count": await run(col.count)})


@router.get(
    "/{name}/items/{item_id:item_id}",
    response_model=ItemOut,
    responses=error_responses(405),
    summary="Get one item",
    description="`item_id` may hold '/', percent-encoded or not. An item whose id is "
    "exactly `delete` cannot be read here: that path is the delete operation's "
    "(POST .../items/delete: a GET there is answered 405, `Allow: POST`); search with "
    '`{"id": "delete"}` finds it.',
)
async def get_item(
    name: str, item_id: str, col: CollectionDep, run: IndexDep, include_vector: bool = False
) -> FastJSON:
    item = await run(col.get, item_id)
    if item is None:
        raise CollectionError("item_not_found", f"no item {item_id!r} in collection {name!r}")
    body = {"id": item_id, "metadata": item.metadata}
    if item.source is not None:
        body["source"] = item.source
    return FastJSON({**body, "vector": item.vector} if include_vector else body)


@router.post(
    "/{name}/search",
    response_model=SearchResponse,
    openapi_extra=inputs.SEARCH_DOC,
    summary="The k nearest items to each query (text, image, vector or stored id)",
)
async def search(request: Request, col: CollectionDep, read: InputsDep, run: IndexDep) -> FastJSON:
    queries, k, where = await read.read_search(request, col)
    hits = await run(col.search, queries, k, where)
    return FastJSON({"results": [[_hit(h) for h in q] for q in hits]})


def _hit(h: Hit) -> dict[str, Any]:
    """A hit as answered: its source only when it has one."""
    out = {"id": h.id, "score": h.score, "metadata": h.metadata}
    return out if h.source is None else {**out, "source": h.source}


@router.post(
    "/{name}/duplicates",
    response_model=DuplicatesResponse,
    dependencies=JSON_ONLY,
    summary="Groups of near-duplicate items (cosine similarity >= threshold)",
    description="A group is a connected component of the pairs whose cosine similarity is "
    "at least `threshold`: 2 or more ids, sorted; groups largest first, then by first id. "
    "Exact (every pair) on a flat collection; otherwise each item's nearest neighbours "
    "through the index (`exact: false`). More than `max_duplicate_scan` items to compare "
    "(after the filter) is 422 `scan_too_large` unless `max_items` bounds the scan.",
)
async def duplicates(
    body: DuplicatesRequest, col: CollectionDep, settings: SettingsDep, run: IndexDep
) -> FastJSON:
    if body.max_items is not None and body.max_items > settings.max_duplicate_scan:
        raise CollectionError(
            "scan_too_large",
            f"max_items {body.max_items} is past max_duplicate_scan "
            f"({settings.max_duplicate_scan}): ask for fewer, or narrow the scan with a filter",
        )
    where = parse_filter(body.filter)  # "invalid_filter" before anything is scanned
    query = DuplicateQuery(
        body.threshold, where, body.limit, body.max_items, settings.max_duplicate_scan
    )
    found = await run(find_duplicates, col, query)
    return FastJSON(found.to_dict())
