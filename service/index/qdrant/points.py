"""How an item is stored as a Qdrant point: its id mapped to a uuid, its metadata under
a key of its own, its source (when it has one) under another; and reading a collection's
points a page at a time."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from contrastkit.service.index.backend import Item

ID_NAMESPACE = uuid.UUID("7d1f5a3e-3c49-5f0b-9a64-5b0c2f6a8e11")  # never change: maps stored ids
ID_KEY, META_KEY, KEYS_KEY = "_id", "meta", "_keys"
SOURCE_KEY = "_source"  # reserved beside META_KEY: the user's keys never reach it
PAGE = 1000  # points per scroll or delete request of our own


def point_id(id_: str) -> str:
    """The Qdrant point id of an item id (or of a collection's config point)."""
    return str(uuid.uuid5(ID_NAMESPACE, id_))


def point_payload(id_: str, meta: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """The payload of item `id_`: the user's keys live under META_KEY, apart from ours."""
    payload = {ID_KEY: id_, META_KEY: meta, KEYS_KEY: list(meta)}
    if source is not None:  # absent, not null: points written before sources look the same
        payload[SOURCE_KEY] = source
    return payload


def item_of(payload: dict[str, Any] | None, vector: Any = None) -> Item:
    """The item a point's payload (and vector, when fetched) stores."""
    p = payload or {}
    vec = None if vector is None else np.asarray(vector, np.float32)
    source = p.get(SOURCE_KEY)
    return Item(
        str(p.get(ID_KEY, "")),
        dict(p.get(META_KEY) or {}),
        vec,
        source if isinstance(source, str) else None,
    )


def scroll_all(
    run: Callable[[Callable[[QdrantClient], Any]], Any],
    qname: str,
    qfilter: models.Filter | None = None,
) -> Iterator[models.Record]:
    """Every point of Qdrant collection `qname` matching `qfilter`, a page per request.

    run: how one client call is made (the backend's `run`, which maps its errors)."""
    offset: models.ExtendedPointId | None = None
    while True:
        records, offset = run(
            partial(
                QdrantClient.scroll,
                collection_name=qname,
                scroll_filter=qfilter,
                limit=PAGE,
                offset=offset,
                with_payload=True,
            )
        )
        yield from records
        if offset is None:
            return
