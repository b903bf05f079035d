"""The collection backend interface: the same operations for every engine behind collections.

Two backends implement it: `contrastkit.service.index.embedded.backend.FaissBackend` (the embedded
store in a folder, the default) and `contrastkit.service.index.qdrant.backend.QdrantBackend` (a
Qdrant server, or qdrant-client's embedded local mode for tests);
`contrastkit.service.index.factory.open_backend` opens either, and the rest of the service reaches
them only through it (tests/test_layout.py holds the rule and its few exceptions). Both are checked
by one contract suite, tests/service/index/test_backend_contract.py.

What a backend promises:

- every upsert obeys the item rules (contrastkit.service.index.items, through `check_batch`): ids
  are strings of 1-256 characters without NUL, metadata a JSON object of finite numbers that reads
  back as written, vectors finite and not zero; each path into a collection (the API, `index add`,
  `index import`, `create_filled`) meets the same rules;
- vectors are stored as float32 rows of unit norm (a row off unit length is scaled to
  it); a search score is their inner product (the cosine similarity), the same number on
  every backend for the same data;
- metadata is stored as given: any key, "_id" and "meta" included, comes back unchanged;
- an item's optional `source` (a path, URI or text: what to embed it from again) is
  stored beside its metadata, never in it; an upsert without one clears it;
- `create_filled` makes a collection from items all or nothing: it is listed only once
  every item is stored (how import and copy_collection make theirs);
- `where` is a `contrastkit.service.index.filters.Filter` (or the JSON object it is parsed from),
  with exactly the semantics of `Filter.matches`; a filtered search returns `k` hits whenever at
  least `k` items match (exactly on the embedded store; Qdrant's HNSW can miss a few);
- every write is durable when the call returns;
- aliases: a name that stands for a collection, switched atomically (`set_alias`);
  `get` takes an alias wherever it takes a collection's name, resolving it once (a
  handle keeps serving the collection it was opened on). The rules
  (contrastkit.service.index.aliases) are the same on every backend: an alias is never a
  collection's name, nor a collection an alias's; it points to a collection that serves; a
  collection an alias points to is not dropped ("collection_aliased", naming the alias);
- errors are `CollectionError`s with a stable code (contrastkit.service.errors maps it to a status),
  never an engine's own exception: an unreachable server is "backend_unavailable" (503),
  naming where it was looked for.

What a backend does NOT do: the model-space guard. A collection records the model id and
dimension it was created for (`handle.model_id`, `handle.dim`), and the API layer checks
that a request's vectors come from that model before it calls `upsert` or `search`
("model_mismatch", "wrong_dimension"). Keeping that check above the backends keeps it in
one place, identical for all of them; a backend only refuses what breaks the item rules
(`check_batch`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from contrastkit.service.index.filters import Filter, parse_filter
from contrastkit.service.index.items import (
    ItemError,
    check_id,
    check_metadata,
    check_source,
    unit_rows,
)
from contrastkit.service.index.types import CollectionError, CollectionInfo, Hit, IndexSpec

MAX_PAGE = 10_000  # items per scroll page
Where = Filter | Mapping[str, Any] | None
Sources = list[str | None] | None  # one per id (None: that item has none), or None: none has
# what one upsert takes: ids [n], vectors float32 [n, dim], metadata [n], sources
Batch = tuple[list[str], np.ndarray, list[dict[str, Any]], Sources]


@dataclass
class Item:
    """One stored item; `vector` float32 [dim] when asked for, else None; `source` where
    it came from, when it was stored with one."""

    id: str
    metadata: dict[str, Any]
    vector: np.ndarray | None = None
    source: str | None = None


@dataclass
class Page:
    """A page of a scroll; pass `next_cursor` back for the next one (None: no more)."""

    items: list[Item]
    next_cursor: str | None


@runtime_checkable
class CollectionHandle(Protocol):
    """One collection. Methods may block on I/O: call them off the event loop."""

    @property
    def name(self) -> str: ...

    @property
    def model_id(self) -> str:
        """The embedding space it was created for (the API's guard reads it)."""
        ...

    @property
    def dim(self) -> int: ...

    def upsert(
        self,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[dict[str, Any]],
        sources: Sources = None,
    ) -> int:
        """Add or replace; `vectors` float32 [n, dim], unit rows -> distinct ids written.

        A repeated id keeps its last occurrence. Durable on return."""
        ...

    def delete(self, ids: list[str]) -> int:
        """Remove these ids (unknown ones are ignored) -> how many were present."""
        ...

    def delete_where(self, where: Where) -> int:
        """Remove every item the filter matches -> how many. An empty filter is refused
        ("invalid_filter"): dropping the collection is how to remove everything."""
        ...

    def get(self, id_: str) -> Item | None:
        """The item with its vector (float32 [dim]), or None."""
        ...

    def scroll(self, cursor: str | None = None, limit: int = 100, vectors: bool = False) -> Page:
        """Up to `limit` items from `cursor` (None: the start), in a fixed order of the
        backend's choosing. Scrolling to the end sees every item present throughout exactly
        once; items written meanwhile may or may not appear. Cursors are opaque strings."""
        ...

    def search(self, queries: np.ndarray, k: int, where: Where = None) -> list[list[Hit]]:
        """queries float32 [q, dim], unit rows -> for each, up to k hits, best first."""
        ...

    def count(self) -> int: ...

    def info(self) -> CollectionInfo: ...


@runtime_checkable
class CollectionBackend(Protocol):
    """All collections of one engine: create, drop, list, open."""

    def create(
        self, name: str, model_id: str, dim: int, spec: IndexSpec | None = None
    ) -> CollectionInfo:
        """A new, empty collection ("collection_exists" if the name is taken)."""
        ...

    def create_filled(
        self, name: str, model_id: str, dim: int, spec: IndexSpec | None, batches: Iterable[Batch]
    ) -> int:
        """A new collection holding the items of `batches`, all or nothing -> items written.

        It is listed, and served, only once every batch is stored. Should anything fail
        first (a refused item, the storage, `batches` itself raising), no collection
        `name` is left behind and the error propagates; after a crash part-way, what was
        written is never served as a collection: the embedded store removes it at its next
        open, and Qdrant lists the name in `problems` until it is dropped.
        ("collection_exists" if the name is taken.)"""
        ...

    def drop(self, name: str) -> None:
        """Delete a collection and its items ("collection_not_found" if there is none)."""
        ...

    def list(self) -> list[CollectionInfo]:
        """The collections that serve, by name."""
        ...

    def get(self, name: str) -> CollectionHandle:
        """A handle on one collection: "collection_not_found", or "collection_corrupt"
        with the reason when it is listed in `problems`."""
        ...

    def aliases(self) -> dict[str, str]:
        """alias -> the name of the collection it points to."""
        ...

    def set_alias(self, alias: str, name: str) -> str | None:
        """Point `alias` at collection `name`, atomically: a `get` of the alias opens the
        old collection or the new one, never neither -> the collection it pointed to
        before (None: a new alias). Durable on return."""
        ...

    def remove_alias(self, alias: str) -> str:
        """Remove an alias ("alias_not_found" if there is none) -> the collection it named."""
        ...

    @property
    def problems(self) -> dict[str, str]:
        """Collections kept out of service: name -> why (the service's /readyz shows them)."""
        ...

    def ping(self) -> None:
        """Raise "backend_unavailable" when the engine cannot be reached (for /readyz)."""
        ...

    def close(self) -> None:
        """Release files, locks and connections; the stored data stays."""
        ...


# -- checks every backend shares ---------------------------------------------------------------
def as_filter(where: Where) -> Filter:
    """A parsed Filter, or the JSON object of one ("invalid_filter" naming what is wrong)."""
    return where if isinstance(where, Filter) else parse_filter(where)


def require_conditions(where: Filter) -> Filter:
    if not where:
        raise CollectionError(
            "invalid_filter",
            "delete by filter needs at least one condition (to remove everything, drop the "
            "collection)",
        )
    return where


def check_batch(
    ids: list[str],
    vectors: np.ndarray,
    metadata: list[dict[str, Any]],
    dim: int,
    sources: Sources = None,
) -> np.ndarray:
    """An upsert, checked by the item rules (contrastkit.service.index.items) -> its vectors as
    contiguous unit float32 [n, dim]. Every backend's upsert calls this, so no path into
    a collection stores what those rules refuse (ItemError names `ids[i]`, `metadata[i]`,
    `sources[i]` or `vectors[i]`)."""
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise CollectionError(
            "wrong_dimension", f"vectors must be [n, {dim}], not {list(vectors.shape)}"
        )
    if not len(ids) == len(vectors) == len(metadata):
        raise CollectionError(
            "invalid_request",
            f"{len(ids)} ids, {len(vectors)} vectors and {len(metadata)} metadata: give one each",
        )
    if sources is not None:
        if len(sources) != len(ids):
            raise CollectionError(
                "invalid_request", f"{len(ids)} ids and {len(sources)} sources: give one each"
            )
        for i, src in enumerate(sources):
            check_source(src, f"sources[{i}]")
    for i, (id_, meta) in enumerate(zip(ids, metadata, strict=True)):
        check_id(id_, f"ids[{i}]")
        if meta is None:  # the rules read None as {}, but a backend stores what it is given
            raise ItemError("invalid_metadata", f"metadata[{i}]", "must be a JSON object, got None")
        check_metadata(meta, f"metadata[{i}]")
    return np.ascontiguousarray(unit_rows(vectors, lambda i: f"vectors[{i}]"))


def check_queries(queries: np.ndarray, k: int, dim: int) -> np.ndarray:
    """queries [q, dim] and k >= 1 -> contiguous float32 queries."""
    if k < 1:
        raise CollectionError("invalid_k", f"k must be at least 1, not {k}")
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise CollectionError(
            "wrong_dimension", f"queries must be [q, {dim}], not {list(queries.shape)}"
        )
    return np.ascontiguousarray(queries, np.float32)


def check_page_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise CollectionError("invalid_request", f"a page holds 1 to {MAX_PAGE} items, not {limit}")
    return limit


def last_occurrences(ids: list[str]) -> list[int]:
    """Positions that survive an upsert: the last occurrence of each id, in order."""
    return sorted({id_: i for i, id_ in enumerate(ids)}.values())


# -- operations written once, on the interface --------------------------------------------------
def iter_items(handle: CollectionHandle, page: int = 1000, vectors: bool = True) -> Iterator[Item]:
    """Every item of a collection, scrolled `page` at a time."""
    cursor: str | None = None
    while True:
        got = handle.scroll(cursor, page, vectors=vectors)
        yield from got.items
        if got.next_cursor is None:
            return
        cursor = got.next_cursor


def copy_collection(
    src: CollectionBackend, dst: CollectionBackend, name: str, batch: int = 1000
) -> int:
    """Copy collection `name` (model id, dim, index spec, items) from one backend to another
    -> items copied. The destination must not have it yet; the source is left as it is.

    All or nothing (`create_filled`): an item the rules refuse, or a failure part-way,
    leaves no collection `name` on `dst`."""
    source = src.get(name)
    info = source.info()
    batches = (
        (
            [it.id for it in chunk],
            np.stack([_vector(it) for it in chunk]),
            [it.metadata for it in chunk],
            [it.source for it in chunk],
        )
        for chunk in _chunks(iter_items(source, batch), batch)
    )
    return dst.create_filled(name, info.model_id, info.dim, info.index, batches)


def _vector(item: Item) -> np.ndarray:
    if item.vector is None:  # iter_items(vectors=True) always fills it
        raise ValueError(f"item {item.id!r} came without its vector")
    return item.vector


def _chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for it in items:
        chunk.append(it)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
