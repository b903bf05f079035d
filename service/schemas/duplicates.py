"""Request and response models of near-duplicate search (POST /v1/collections/{name}/duplicates;
the algorithm is contrastkit.service.index.duplicates)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat

from contrastkit.service.schemas.collections import PositiveInt

MAX_GROUPS = 1000  # the largest `limit`


class DuplicatesRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"threshold": 0.95, "filter": {"kind": "photo"}}]},
    )

    threshold: StrictFloat = Field(
        0.95, gt=0, le=1, description="cosine similarity at or above which two items pair up"
    )
    filter: dict[str, Any] | None = Field(
        None, description="compare only the items it matches (the search's `where` syntax)"
    )
    limit: PositiveInt = Field(100, le=MAX_GROUPS, description="groups returned, at most")
    max_items: PositiveInt | None = Field(
        None,
        description="scan only the first this many matching items (the collection's scroll "
        "order); default: all, refused past max_duplicate_scan",
    )


class DuplicateGroup(BaseModel):
    ids: list[str] = Field(..., description="2 or more, sorted")
    max_similarity: float = Field(..., description="the most similar pair that joined it")
    min_similarity: float = Field(
        ...,
        description="the least similar pair that joined it (>= threshold; members linked "
        "through a third may be less similar to each other)",
    )


class DuplicatesResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "groups": [
                        {
                            "ids": ["cat.jpg", "cat-small.jpg"],
                            "max_similarity": 0.991,
                            "min_similarity": 0.991,
                        }
                    ],
                    "n_groups": 1,
                    "n_items_scanned": 1200,
                    "exact": True,
                    "truncated": False,
                }
            ]
        }
    )

    groups: list[DuplicateGroup] = Field(..., description="largest first, then by first id")
    n_groups: int = Field(..., description="groups found, before `limit`")
    n_items_scanned: int
    exact: bool = Field(
        ...,
        description="true: every pair compared (flat index); false: each item's nearest "
        "neighbours through the index (IVF, HNSW, Qdrant), which can miss a pair",
    )
    truncated: bool = Field(
        ..., description="groups left out past `limit`, or items past `max_items` not scanned"
    )
