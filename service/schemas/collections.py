"""Request and response models of the collections API (/v1/collections; also the OpenAPI docs).

Checks that need the collection or the settings (dimension, finiteness, limits, k) live in
contrastkit.service.api.collection_inputs, where they get their own error codes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictFloat,
    model_validator,
)

from contrastkit.service.index.items import MAX_SOURCE_BYTES
from contrastkit.service.index.types import MAX_ID_CHARS, IndexSpec
from contrastkit.service.schemas.embeddings import integral
from contrastkit.service.schemas.migrations import MigrationStatus

# JSON integers, strictly (not "8" or true) but 8.0 included, as JSON Schema's `integer`
# counts it. The bounds go before the validator, so that the schema states them.
PositiveInt = Annotated[int, Strict(), Field(ge=1), BeforeValidator(integral)]
RefineInt = Annotated[int, Strict(), Field(ge=0, le=64), BeforeValidator(integral)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IndexSpecModel(_Strict):
    """Which index serves searches. "flat": exact; "auto" (default): flat until
    `auto_threshold` vectors, then HNSW; "ivf": `nlist` lists, `nprobe` searched;
    "hnsw": `m` links per node, `ef_construction`, `ef_search`. Compressed (exact until
    there are enough vectors to train on): "ivfpq", `pq_m` bytes per vector (a divisor
    of dim); "hnsw_sq8": 8-bit codes; both re-rank `refine` x k candidates exactly."""

    kind: Literal["auto", "flat", "ivf", "hnsw", "ivfpq", "hnsw_sq8"] = "auto"
    auto_threshold: int = Field(50_000, ge=1)
    nlist: int | None = Field(None, ge=1, description="default: ~4*sqrt(n) when trained")
    nprobe: int = Field(32, ge=1)
    m: int = Field(32, ge=2, le=256)
    ef_construction: int = Field(80, ge=1)
    ef_search: int = Field(128, ge=1)
    pq_m: PositiveInt | None = Field(None, description="ivfpq: bytes per vector, divides dim")
    refine: RefineInt = Field(16, description="compressed kinds: exact re-ranking of refine*k")

    def to_spec(self) -> IndexSpec:
        return IndexSpec(**self.model_dump())


class CreateCollectionRequest(_Strict):
    name: str = Field(..., description="1-64 letters, digits, '_', '.', '-'; no '..'")
    index: IndexSpecModel | None = None
    model_id: str | None = Field(
        None, min_length=1, description="default: the loaded model's; give dim with it"
    )
    dim: int | None = Field(None, ge=1, description="default: the loaded model's")


class CollectionInfoModel(BaseModel):
    name: str
    model_id: str
    dim: int
    count: int
    index: IndexSpecModel
    active_index: str = Field(..., description="flat, ivf or hnsw: what serves searches now")
    created_at: str
    status: str = Field("ok", description="ok, or how it was recovered (rebuilt_from_log)")
    log_records: int = Field(0, description="records in the log since the last snapshot")
    migration: MigrationStatus | None = Field(
        None,
        description="the latest migration from or into this collection since the server "
        "started (POST /v1/admin/migrations); absent when none",
    )


class CollectionList(BaseModel):
    collections: list[CollectionInfoModel]


class DeletedCollection(BaseModel):
    deleted: str


def _one_given(*fields: str) -> ConfigDict:
    """The model's config, whose schema states what _exactly_one checks: exactly one of
    `fields` is given and not null."""
    given = [{"required": [f], "properties": {f: {"not": {"type": "null"}}}} for f in fields]
    return ConfigDict(extra="forbid", json_schema_extra={"oneOf": given})  # type: ignore[dict-item]


def _exactly_one(model: BaseModel, fields: tuple[str, ...]) -> None:
    given = [f for f in fields if getattr(model, f) is not None]
    if len(given) != 1:
        names = ", ".join(fields[:-1]) + f" or {fields[-1]}"
        got = ", ".join(given) if given else "none"
        raise ValueError(f"give exactly one of {names} (got: {got})")


SOURCE_DOC = (
    "where the item came from: a path, a URI or the text itself, kept so that it can be "
    f"embedded again by another model; 1-{MAX_SOURCE_BYTES} bytes of UTF-8, no NUL "
    "(`invalid_source` otherwise); returned by search and item reads when present"
)


class ItemIn(_Strict):
    model_config = _one_given("text", "image", "vector")
    id: str = Field(..., min_length=1, max_length=MAX_ID_CHARS, description="1-256 characters")
    text: str | None = None
    image: str | None = Field(None, description="a base64 image file (or a data: URL)")
    vector: list[StrictFloat] | None = Field(
        None, description="[dim] numbers; normalised on arrival"
    )
    metadata: dict[str, Any] | None = Field(None, description="a JSON object; default {}")
    source: str | None = Field(None, description=SOURCE_DOC)

    @model_validator(mode="after")
    def _one_source(self) -> ItemIn:
        _exactly_one(self, ("text", "image", "vector"))
        return self


class UpsertRequest(_Strict):
    items: list[ItemIn] = Field(..., description="a repeated id keeps its last occurrence")


class UpsertResponse(BaseModel):
    upserted: int = Field(..., description="distinct ids written")
    count: int = Field(..., description="items in the collection now")


class DeleteItemsRequest(_Strict):
    ids: list[str] = Field(..., description="unknown ids are ignored")


class DeleteItemsResponse(BaseModel):
    deleted: int = Field(..., description="how many of the ids were present")
    count: int


class ItemOut(BaseModel):
    id: str
    metadata: dict[str, Any]
    vector: list[float] | None = Field(None, description="unit norm; with include_vector=true")
    source: str | None = Field(None, description="where it came from, when stored with one")


class Query(_Strict):
    model_config = _one_given("text", "image", "vector", "id")
    text: str | None = None
    image: str | None = Field(None, description="a base64 image file (or a data: URL)")
    vector: list[StrictFloat] | None = Field(None, description="[dim] numbers")
    id: str | None = Field(None, description="the id of a stored item: find its neighbours")

    @model_validator(mode="after")
    def _one_source(self) -> Query:
        _exactly_one(self, ("text", "image", "vector", "id"))
        return self


class SearchRequest(_Strict):
    queries: list[Query]
    k: int = Field(10, description="hits per query, 1..max_k")
    where: dict[str, Any] | None = Field(
        None, description="equality filter: items whose metadata has all these values"
    )


class SearchHit(BaseModel):
    id: str
    score: float = Field(..., description="cosine similarity of the query and the item")
    metadata: dict[str, Any]
    source: str | None = Field(None, description="where it came from, when stored with one")


class SearchResponse(BaseModel):
    results: list[list[SearchHit]] = Field(..., description="hits per query, best first")


# -- aliases (/v1/aliases) -----------------------------------------------------------------
class SetAliasRequest(_Strict):
    collection: str = Field(..., description="the collection the alias is to point to")


class AliasOut(BaseModel):
    alias: str
    collection: str = Field(..., description="the collection it points to")


class SetAliasResponse(AliasOut):
    previous: str | None = Field(
        None, description="the collection it pointed to before; null for a new alias"
    )


class AliasList(BaseModel):
    aliases: list[AliasOut] = Field(..., description="by alias")


class DeletedAlias(BaseModel):
    deleted: str = Field(..., description="the alias removed")
    collection: str = Field(..., description="the collection it pointed to (left as it is)")
