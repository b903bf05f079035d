"""Decoded JSON bodies of 2xx answers -> result types (see `_transport.json_body`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from contrastkit.service.client.types import (
    Classification,
    CollectionSummary,
    Embeddings,
    Item,
    RankedLabel,
    SearchMatch,
)


def embeddings(body: Any) -> Embeddings:
    """{"model", "dim", "embeddings": [n][dim]} -> Embeddings with float32 [n, dim]."""
    dim = int(body["dim"])
    vectors = np.asarray(body["embeddings"], dtype=np.float32).reshape(-1, dim)
    return Embeddings(model=str(body["model"]), dim=dim, vectors=vectors)


def classifications(body: Any) -> list[Classification]:
    """{"results": [{"index", "ranking": [{"label", "probability", "score"}]}]} -> list."""
    return [
        Classification(
            index=int(r["index"]),
            ranking=[
                RankedLabel(str(s["label"]), float(s["probability"]), float(s["score"]))
                for s in r["ranking"]
            ],
        )
        for r in body["results"]
    ]


def models(body: Any) -> list[dict[str, Any]]:
    """{"object": "list", "data": [model card, ...]} -> the model cards."""
    return list(body["data"])


def collection(body: Any) -> CollectionSummary:
    """The server's CollectionInfo.to_dict() -> CollectionSummary."""
    return CollectionSummary(
        name=str(body["name"]),
        model_id=str(body["model_id"]),
        dim=int(body["dim"]),
        count=int(body["count"]),
        index=dict(body["index"]),
        active_index=str(body["active_index"]),
        created_at=str(body["created_at"]),
        status=str(body.get("status", "ok")),
        log_records=int(body.get("log_records", 0)),
    )


def collections(body: Any) -> list[CollectionSummary]:
    """{"collections": [CollectionInfo.to_dict()...]} -> list."""
    return [collection(c) for c in body["collections"]]


def upserted(body: Any) -> int:
    """{"upserted": n, "count": total} -> n."""
    return int(body["upserted"])


def deleted(body: Any) -> int:
    """{"deleted": n_present, "count": total} -> n_present."""
    return int(body["deleted"])


def nothing(body: Any) -> None:
    """Any 2xx body -> None (the call is done for its effect)."""


def item(body: Any) -> Item:
    """{"id", "metadata", "vector"?} -> Item (vector float32 [dim] or None)."""
    vector = body.get("vector")
    return Item(
        id=str(body["id"]),
        metadata=dict(body.get("metadata") or {}),
        vector=None if vector is None else np.asarray(vector, dtype=np.float32),
        source=body.get("source"),
    )


def matches(body: Any) -> list[list[SearchMatch]]:
    """{"results": [[{"id", "score", "metadata", "source"?}...] per query]} -> matches
    per query."""
    return [[_match(h) for h in hits] for hits in body["results"]]


def _match(h: Any) -> SearchMatch:
    return SearchMatch(
        str(h["id"]), float(h["score"]), dict(h.get("metadata") or {}), h.get("source")
    )


def aliases(body: Any) -> dict[str, str]:
    """{"aliases": [{"alias", "collection"}...]} -> alias -> collection."""
    return {str(a["alias"]): str(a["collection"]) for a in body["aliases"]}


def previous(body: Any) -> str | None:
    """{"alias", "collection", "previous"} -> the collection it pointed to before."""
    got = body.get("previous")
    return None if got is None else str(got)


def alias_removed(body: Any) -> str:
    """{"deleted", "collection"} -> the collection the alias pointed to."""
    return str(body["collection"])


def first_matches(body: Any) -> list[SearchMatch]:
    """A one-query search's body -> that query's matches."""
    return matches(body)[0]


def anything(body: Any) -> dict[str, Any]:
    """A JSON object, as it came (the admin API's statuses)."""
    if not isinstance(body, dict):
        raise TypeError(f"expected a JSON object, got {type(body).__name__}")
    return body
