"""/v1/aliases: second names for collections, switched atomically.

An alias is accepted by every route of /v1/collections/{name}/... (search, items, the
description) wherever a collection's name is; it is resolved once per request. Switching
one (PUT again with another collection) moves every request that starts afterwards to
the new collection; a request under way finishes on the one it began with. The rules
(no alias named as a collection, none pointing to a missing one, no collection dropped
while an alias points to it) are contrastkit.service.index.aliases, the same on every backend.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from contrastkit.service.api.deps import IndexDep, StoreDep
from contrastkit.service.api.payload import require_json_dep
from contrastkit.service.api.routes import refusing_router
from contrastkit.service.responses import FastJSON
from contrastkit.service.schemas.collections import (
    AliasList,
    DeletedAlias,
    SetAliasRequest,
    SetAliasResponse,
)

router = APIRouter(prefix="/v1/aliases", tags=["collections"])
# with `collections` off, as /v1/collections: refused before anything is read
disabled_router = refusing_router(
    "/v1/aliases",
    "collections_disabled",
    "this replica serves no collections (setting collections=false); send "
    "/v1/aliases requests to the replica that owns them",
)


@router.get("", response_model=AliasList, summary="List the aliases")
async def list_aliases(store: StoreDep, run: IndexDep) -> FastJSON:
    found = await run(store.aliases)
    rows = [{"alias": a, "collection": c} for a, c in sorted(found.items())]
    return FastJSON({"aliases": rows})


@router.put(
    "/{alias}",
    response_model=SetAliasResponse,
    dependencies=[Depends(require_json_dep)],
    summary="Point an alias at a collection (create it, or switch it atomically)",
    description="404 `collection_not_found` when the collection does not exist (an alias "
    "is no collection: aliases do not chain); 409 `alias_conflict` when `alias` is a "
    "collection's name. Durable when answered.",
)
async def set_alias(alias: str, body: SetAliasRequest, store: StoreDep, run: IndexDep) -> FastJSON:
    previous = await run(store.set_alias, alias, body.collection)
    return FastJSON({"alias": alias, "collection": body.collection, "previous": previous})


@router.delete(
    "/{alias}",
    response_model=DeletedAlias,
    summary="Remove an alias (its collection stays)",
    description="404 `alias_not_found` when there is no such alias.",
)
async def delete_alias(alias: str, store: StoreDep, run: IndexDep) -> FastJSON:
    name = await run(store.remove_alias, alias)
    return FastJSON({"deleted": alias, "collection": name})
