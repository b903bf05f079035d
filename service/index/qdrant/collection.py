"""One Qdrant collection behind the CollectionHandle interface
(contrastkit.service.index.backend)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from qdrant_client import QdrantClient, models

from contrastkit.service.index.backend import (
    Item,
    Page,
    Sources,
    Where,
    as_filter,
    check_batch,
    check_page_limit,
    check_queries,
    last_occurrences,
    require_conditions,
)
from contrastkit.service.index.qdrant.filters import can_match, to_qdrant
from contrastkit.service.index.qdrant.points import (
    PAGE,
    item_of,
    point_id,
    point_payload,
    scroll_all,
)
from contrastkit.service.index.qdrant.sidecar import CollectionConfig
from contrastkit.service.index.types import CollectionError, CollectionInfo, Hit

if TYPE_CHECKING:
    from contrastkit.service.index.qdrant.backend import QdrantBackend

T = TypeVar("T")


class QdrantCollection:
    """One collection in Qdrant behind the CollectionHandle interface."""

    def __init__(self, backend: QdrantBackend, config: CollectionConfig) -> None:
        self._b = backend
        self._cfg = config
        self.name, self.model_id, self.dim = config.name, config.model_id, config.dim
        self.qname = backend.qname(config.name)

    def _run(self, op: Callable[[QdrantClient], T]) -> T:
        return self._b.run(op, self.name)

    def _write(self, op: Callable[[QdrantClient], models.UpdateResult]) -> None:
        """A write, answered as done only once Qdrant confirms it applied (backend.write)."""
        self._b.write(op, self.name)

    # -- writes ---------------------------------------------------------------------------
    def upsert(
        self,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[dict[str, Any]],
        sources: Sources = None,
    ) -> int:
        vecs = check_batch(ids, vectors, metadata, self.dim, sources)
        src = sources or [None] * len(ids)
        keep = last_occurrences(ids)
        # one request per upsert_batch points: a failure part-way leaves the earlier
        # batches written, and a retry of the same upsert converges (it is idempotent)
        step = self._b.config.upsert_batch
        for start in range(0, len(keep), step):
            rows = keep[start : start + step]
            batch = models.Batch(
                ids=[point_id(ids[i]) for i in rows],
                vectors=vecs[rows].tolist(),
                payloads=[point_payload(ids[i], metadata[i], src[i]) for i in rows],
            )
            self._write(
                partial(QdrantClient.upsert, collection_name=self.qname, points=batch, wait=True)
            )
        return len(keep)

    def delete(self, ids: list[str]) -> int:
        pids = [point_id(i) for i in dict.fromkeys(ids)]
        present: list[models.ExtendedPointId] = []
        for start in range(0, len(pids), PAGE):
            chunk = pids[start : start + PAGE]
            found = self._run(
                partial(
                    QdrantClient.retrieve,
                    collection_name=self.qname,
                    ids=chunk,
                    with_payload=False,
                    with_vectors=False,
                )
            )
            present += [r.id for r in found]
        self._delete_points(present)
        return len(present)

    def delete_where(self, where: Where) -> int:
        f = require_conditions(as_filter(where))
        if not can_match(f):
            return 0
        self._b.ensure_indexes(self._cfg, f)
        # not one transaction: an item written to match while this runs may stay
        doomed = [r.id for r in self._scan(to_qdrant(f)) if f.matches(item_of(r.payload).metadata)]
        self._delete_points(doomed)
        return len(doomed)

    def _delete_points(self, pids: list[models.ExtendedPointId]) -> None:
        for start in range(0, len(pids), PAGE):
            sel = models.PointIdsList(points=pids[start : start + PAGE])
            self._write(
                partial(
                    QdrantClient.delete, collection_name=self.qname, points_selector=sel, wait=True
                )
            )

    def _scan(self, qfilter: models.Filter) -> Iterator[models.Record]:
        return scroll_all(partial(self._b.run, name=self.name), self.qname, qfilter)

    # -- reads ----------------------------------------------------------------------------
    def get(self, id_: str) -> Item | None:
        found = self._run(
            lambda c: c.retrieve(self.qname, [point_id(id_)], with_payload=True, with_vectors=True)
        )
        return item_of(found[0].payload, found[0].vector) if found else None

    def scroll(self, cursor: str | None = None, limit: int = 100, vectors: bool = False) -> Page:
        check_page_limit(limit)
        offset = _cursor(cursor)
        records, nxt = self._run(
            lambda c: c.scroll(
                self.qname, limit=limit, offset=offset, with_payload=True, with_vectors=vectors
            )
        )
        items = [item_of(r.payload, r.vector if vectors else None) for r in records]
        return Page(items, None if nxt is None else str(nxt))

    def search(self, queries: np.ndarray, k: int, where: Where = None) -> list[list[Hit]]:
        """queries float32 [q, dim] -> for each, up to k hits, best first.

        With a filter, each query asks for k points, then 4x more while fewer than k of
        those that came back pass `Filter.matches` and Qdrant had more to give."""
        q = check_queries(queries, k, self.dim)
        f = as_filter(where)
        out: list[list[Hit]] = [[] for _ in range(len(q))]
        if not can_match(f):
            return out
        if f:
            self._b.ensure_indexes(self._cfg, f)
        qfilter = to_qdrant(f) if f else None
        pending, limit = list(range(len(q))), k
        while pending:
            answers = self._query(q[pending], limit, qfilter)
            still = []
            for qi, points in zip(pending, answers, strict=True):
                hits = [_hit(p) for p in points]
                hits = [h for h in hits if f.matches(h.metadata)] if f else hits
                if len(hits) >= k or len(points) < limit:
                    out[qi] = hits[:k]
                else:
                    still.append(qi)
            pending, limit = still, limit * 4
        return out

    def _query(
        self, queries: np.ndarray, limit: int, qfilter: models.Filter | None
    ) -> list[list[models.ScoredPoint]]:
        requests = [
            models.QueryRequest(
                query=row.tolist(),
                filter=qfilter,
                limit=limit,
                params=None if self._b.local else self._cfg.search_params,  # local: exact
                with_payload=True,
            )
            for row in queries
        ]
        answers = self._run(lambda c: c.query_batch_points(self.qname, requests=requests))
        return [a.points for a in answers]

    def count(self) -> int:
        return self._run(lambda c: c.count(self.qname, exact=True)).count

    def info(self) -> CollectionInfo:
        return self._b.info_of(self._cfg)


def _hit(p: models.ScoredPoint) -> Hit:
    item = item_of(p.payload)
    return Hit(item.id, float(p.score), item.metadata, item.source)


def _cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        return str(uuid.UUID(cursor))
    except ValueError:
        raise CollectionError(
            "invalid_request", f"{cursor!r} is not a scroll cursor of this collection"
        ) from None
