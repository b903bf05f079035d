"""Request and response models of migrations (/v1/admin/migrations, and the `migration`
field of GET /v1/collections/{name}); they also make the OpenAPI docs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # a collection's or an alias's name


class StartMigrationRequest(BaseModel):
    """A collection to rebuild in a served model's space, and the alias to switch."""

    model_config = ConfigDict(extra="forbid")
    collection: str = Field(
        ..., pattern=NAME, description="the collection, or an alias of it (then it switches)"
    )
    model: str = Field(
        ...,
        min_length=1,
        max_length=4096,
        description="a model this server serves (id, reference or alias: GET /v1/models); "
        "load it first with POST /v1/admin/models",
    )
    alias: str | None = Field(
        None,
        pattern=NAME,
        description="the alias to create or switch; required when `collection` is a "
        "collection (an alias may not shadow a collection's name)",
    )
    new_name: str | None = Field(
        None, pattern=NAME, description="the new collection [COLLECTION-<model tag>]"
    )
    allow_missing: bool = Field(
        False, description="switch even when some items could not be embedded"
    )
    batch: int = Field(32, ge=1, le=1024, description="items per model batch")


class MissingItem(BaseModel):
    id: str
    source: str | None = Field(..., description="the stored source; null when none was")
    reason: str = Field(..., description="why the new model could not embed it")


class MigrationStatus(BaseModel):
    """One migration: `running`, then `switched`, `built` (not switched: items missing),
    `failed` or `cancelled` (the old collection serves as before; start again to resume)."""

    collection: str = Field(..., description="the collection migrated (the old one)")
    new: str = Field(..., description="the collection being built in the new space")
    alias: str = Field(..., description="the alias switched to `new` at the end")
    model: str = Field(..., description="the new model's id")
    state: Literal["running", "switched", "built", "failed", "cancelled"]
    pass_: int | Literal["last"] = Field(
        ...,
        alias="pass",
        description="1: the bulk; 2...: catch-up passes over what changed meanwhile; "
        "last: the pass before the switch, with the old collection's writes held",
    )
    done: int = Field(..., description="items of this pass done")
    total: int = Field(..., description="items of this pass")
    written: int = Field(..., description="items written to `new` (when ended)")
    missing_count: int = Field(..., description="items that could not be embedded")
    missing: list[MissingItem] = Field(..., description="the first 100 of them")
    previous: str | None = Field(None, description="where the alias pointed before")
    error: str | None = Field(None, description="why it failed")
    held_seconds: float | None = Field(
        None, description="how long the last pass and the switch held writes to the old one"
    )
    started_at: float = Field(..., description="Unix time")
    finished_at: float | None = Field(None, description="Unix time; null while running")


class MigrationList(BaseModel):
    migrations: list[MigrationStatus] = Field(..., description="since the server started")
