"""/v1/admin/migrations: a collection rebuilt in another served model's space while it
keeps serving, then an alias switched to the new one (contrastkit.service.runtime.migrations).

An admin operation (it reads the files the items' sources name, on the server's disk):
mounted under the admin API's prefix, so it takes the admin key and is off where the
admin API is. Progress is also the `migration` field of GET /v1/collections/{name}.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from contrastkit.service.api.deps import ModelsDep, SettingsDep, State, StoreDep
from contrastkit.service.api.payload import require_json_dep
from contrastkit.service.api.routes import refusing_router
from contrastkit.service.api.routes.admin import PREFIX, admin_key
from contrastkit.service.domain_errors import RequestError
from contrastkit.service.responses import FastJSON
from contrastkit.service.runtime.migrations import MigrationRequest
from contrastkit.service.schemas.migrations import (
    MigrationList,
    MigrationStatus,
    StartMigrationRequest,
)

router = APIRouter(prefix=f"{PREFIX}/migrations", tags=["admin"], dependencies=[Depends(admin_key)])
# with `collections` off (and the admin API on): refused before anything is read
disabled_router = refusing_router(
    f"{PREFIX}/migrations",
    "collections_disabled",
    "this replica serves no collections (setting collections=false): send migrations to "
    "the replica that owns them",
)


@router.post(
    "",
    status_code=202,
    response_model=MigrationStatus,
    dependencies=[Depends(require_json_dep)],
    summary="Move a collection to another served model; the alias switches at the end",
    description="Answers 202 at once; follow it at GET /v1/admin/migrations/{collection} "
    "or in GET /v1/collections/{collection}. The old collection keeps serving searches "
    "and writes meanwhile; writes through the alias are held for the last pass and the "
    "switch (a second or so). 409 `migration_refused` with what to send instead (an "
    "alias needed, a name taken, the same model), 409 `migration_running`.",
)
async def start_migration(
    body: StartMigrationRequest, state: State, store: StoreDep, models: ModelsDep,
    settings: SettingsDep,
) -> FastJSON:  # fmt: skip
    encoder = models.resolve(body.model).encoder
    req = MigrationRequest(
        body.collection, body.alias, body.new_name, body.allow_missing, body.batch
    )
    # the checks read the store: off the event loop, in the index pool
    status = await state.run_index(
        state.migrations.start, store, encoder, settings.max_image_pixels, req
    )
    where = {"Location": f"{PREFIX}/migrations/{status.collection}"}
    return FastJSON(status.to_dict(), status_code=202, headers=where)


@router.get("", response_model=MigrationList, summary="Migrations since the server started")
async def list_migrations(state: State) -> FastJSON:
    return FastJSON({"migrations": [s.to_dict() for s in state.migrations.all()]})


@router.get(
    "/{name}",
    response_model=MigrationStatus,
    summary="One migration's progress (by the old or new collection, or the alias)",
)
async def get_migration(name: str, state: State) -> FastJSON:
    status = state.migrations.about(name)
    if status is None:
        raise RequestError("migration_not_found", f"no migration of {name!r} on this server")
    return FastJSON(status.to_dict())


@router.delete(
    "/{name}",
    response_model=MigrationStatus,
    summary="Cancel a migration after its current batch (the old collection is untouched)",
    description="The partly built collection stays: start the migration again to resume "
    "it, or drop it. A migration that has ended is left as it is.",
)
async def cancel_migration(name: str, state: State) -> FastJSON:
    return FastJSON(state.migrations.cancel(name).to_dict())
