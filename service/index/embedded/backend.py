"""FaissBackend: the embedded store (store.CollectionStore) behind the CollectionBackend
interface (contrastkit.service.index.backend).

An adapter: CollectionStore and Collection are used as they are. What the interface asks
and a Collection does not offer yet is built here on its state:

- the full filter language: `Filter.matches` is the collection's predicate; it picks the
  matching ids before the search (exact up to EXACT_FILTER_LIMIT matches, else the index's
  id selector), so `k` hits come back whenever `k` match;
- delete by filter: the matching ids, deleted as one durable write;
- scrolling: ids in sorted order, a cursor being the next id to return, so a scroll sees
  every id present throughout exactly once whatever is written meanwhile;
- aliases: the folder's alias file (aliases.AliasFile), checked by
  contrastkit.service.index.aliases.

The Collection's in-memory state is read in one place, `_State`, under the collection's
own lock: when the store gains queries of its own, only `_State` changes.
"""

from __future__ import annotations

import bisect
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.service.index import aliases as rules
from contrastkit.service.index.backend import (
    Batch,
    Item,
    Page,
    Sources,
    Where,
    as_filter,
    check_batch,
    check_page_limit,
    check_queries,
    require_conditions,
)
from contrastkit.service.index.embedded.aliases import AliasFile
from contrastkit.service.index.embedded.collection import Collection
from contrastkit.service.index.embedded.staging import staging_folder
from contrastkit.service.index.embedded.store import CollectionStore
from contrastkit.service.index.filters import Filter
from contrastkit.service.index.types import (
    CollectionError,
    CollectionInfo,
    Hit,
    IndexSpec,
    check_new,
)


class _State:
    """Read access to a Collection's in-memory state (ids, metadata, vectors).

    Collection exposes no iteration; this is the one place that reads its private dicts.
    Callers hold `lock` across a read that must be consistent."""

    def __init__(self, col: Collection) -> None:
        self.col = col
        self.lock = col._lock

    @property
    def version(self) -> int:
        """Changes with every write (the log sequence)."""
        return self.col._seq

    def metadata(self) -> dict[str, dict[str, Any]]:
        return self.col._meta

    def source(self, id_: str) -> str | None:
        return self.col.source(id_)

    def vector(self, id_: str) -> np.ndarray:
        return self.col._vec[id_]

    def check_files(self) -> None:
        """collection_corrupt when the files changed under the collection (before its rows
        are read: a truncated snapshot mapping would raise SIGBUS)."""
        self.col._check_files()


class FaissCollection:
    """A Collection behind the CollectionHandle interface."""

    def __init__(self, col: Collection) -> None:
        self.col = col
        # a collection's space never changes, so plain attributes serve the protocol
        self.name, self.model_id, self.dim = col.name, col.model_id, col.dim
        self._state = _State(col)
        self._sorted: tuple[int, list[str]] = (-1, [])  # (version, ids sorted) for scroll

    # -- writes ---------------------------------------------------------------------------
    def upsert(
        self,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[dict[str, Any]],
        sources: Sources = None,
    ) -> int:
        vecs = check_batch(ids, vectors, metadata, self.dim, sources)
        return self.col.upsert(ids, vecs, metadata, sources) if ids else 0

    def delete(self, ids: list[str]) -> int:
        return self.col.delete(ids)

    def delete_where(self, where: Where) -> int:
        f = require_conditions(as_filter(where))
        with self._state.lock:  # no write between choosing the ids and deleting them
            return self.col.delete(self._matching(f))

    # -- reads ----------------------------------------------------------------------------
    def get(self, id_: str) -> Item | None:
        with self._state.lock:  # the item and its source as of one moment
            got = self.col.get(id_)
            return None if got is None else Item(id_, got[1], got[0], self._state.source(id_))

    def scroll(self, cursor: str | None = None, limit: int = 100, vectors: bool = False) -> Page:
        check_page_limit(limit)
        with self._state.lock:
            self._state.check_files()
            ids = self._sorted_ids()
            start = 0 if cursor is None else bisect.bisect_left(ids, cursor)
            page = ids[start : start + limit]
            meta = self._state.metadata()
            items = [
                Item(
                    i,
                    dict(meta[i]),
                    self._state.vector(i).copy() if vectors else None,
                    self._state.source(i),
                )
                for i in page
            ]
            after = start + limit
            return Page(items, ids[after] if after < len(ids) else None)

    def _sorted_ids(self) -> list[str]:
        """All ids in sorted order, re-sorted only after a write (a scroll of n items in
        pages would otherwise sort n ids per page)."""
        version, ids = self._sorted
        if version != self._state.version:
            ids = sorted(self._state.metadata())
            self._sorted = (self._state.version, ids)
        return ids

    def search(self, queries: np.ndarray, k: int, where: Where = None) -> list[list[Hit]]:
        """queries float32 [q, dim] -> for each, up to k hits, best first. A filter is
        applied inside the search (exactly up to EXACT_FILTER_LIMIT matches, else as the
        index's id selector), so k hits come back whenever k items match."""
        q = check_queries(queries, k, self.dim)
        f = as_filter(where)
        return self.col.search(q, k, f if f else None)

    def _matching(self, f: Filter) -> list[str]:
        return [i for i, m in self._state.metadata().items() if f.matches(m)]

    def count(self) -> int:
        return self.col.count

    def info(self) -> CollectionInfo:
        return self.col.info()


class FaissBackend:
    """A CollectionStore (one folder, one writer process) behind the CollectionBackend
    interface."""

    def __init__(self, store: CollectionStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._handles: dict[str, FaissCollection] = {}
        try:
            self._aliases = AliasFile(store.root)
        except BaseException:
            store.close()  # release the folder's lock: the open failed
            raise

    @classmethod
    def open(
        cls, root: Path, snapshot_every: int = 20_000, device: str | None = None
    ) -> FaissBackend:
        """Open (recovering) the collections under `root`; StoreLockedError when another
        process has them open."""
        return cls(CollectionStore(root, snapshot_every, device))

    def create(
        self, name: str, model_id: str, dim: int, spec: IndexSpec | None = None
    ) -> CollectionInfo:
        with self._aliases.lock:  # no alias takes the name meanwhile
            rules.check_new_collection(name, self._aliases.current)
            return self.store.create(name, model_id, dim, spec)

    def create_filled(
        self, name: str, model_id: str, dim: int, spec: IndexSpec | None, batches: Iterable[Batch]
    ) -> int:
        """Filled in a staging folder (staging.py), then renamed to `name`: all or nothing.
        On any failure the staging folder is removed; after a crash, the next open does."""
        spec = check_new(name, dim, spec)
        rules.check_new_collection(name, self._aliases.current)
        taken = {c.name for c in self.store.list()} | set(self.store.problems)
        if name in taken or (self.store.root / name).exists():  # publish checks again
            raise CollectionError("collection_exists", f"collection {name!r} already exists")
        folder = staging_folder(self.store.root, name)
        col: Collection | None = None
        try:
            Collection.create(folder, name, model_id, dim, spec)
            col = Collection(folder, self.store.snapshot_every, self.store.device)
            handle = FaissCollection(col)  # its upsert checks every item (check_batch)
            written = sum(handle.upsert(*batch) for batch in batches)
            if col.log_records:
                col.snapshot()  # the published folder then opens without replaying a log
            col.close()
            col = None
            with self._aliases.lock:  # checked again: an alias may have taken the name
                rules.check_new_collection(name, self._aliases.current)
                self.store.publish(folder, name)
        except BaseException:
            if col is not None:
                col.close()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return written

    def drop(self, name: str) -> None:
        with self._aliases.lock:  # no alias comes to point to it meanwhile
            rules.check_drop(name, self._aliases.current)
            self.store.delete(name)
        with self._lock:
            self._handles.pop(name, None)

    def list(self) -> list[CollectionInfo]:
        return self.store.list()

    def get(self, name: str) -> FaissCollection:
        """The collection `name`, or the one alias `name` points to now (read once: one
        dict lookup, so a switch meanwhile gives the old collection or the new one)."""
        col = self.store.get(self._aliases.current.get(name, name))
        with self._lock:  # one handle per open Collection: it keeps the scroll order cached
            handle = self._handles.get(name)
            if handle is None or handle.col is not col:
                handle = self._handles[name] = FaissCollection(col)
            return handle

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases.current)

    def set_alias(self, alias: str, name: str) -> str | None:
        with self._aliases.lock:
            now = self._aliases.current
            rules.check_set(alias, name, self._collection_names(), now)
            self._aliases.replace({**now, alias: name})
            return now.get(alias)

    def remove_alias(self, alias: str) -> str:
        with self._aliases.lock:
            now = self._aliases.current
            name = rules.check_remove(alias, now)
            self._aliases.replace({a: c for a, c in now.items() if a != alias})
            return name

    def _collection_names(self) -> set[str]:
        """Every collection's name, served or refused."""
        return {c.name for c in self.store.list()} | set(self.store.problems)

    @property
    def problems(self) -> dict[str, str]:
        return dict(self.store.problems)

    def ping(self) -> None:
        """The store is in this process: reachable while it is open."""

    def close(self) -> None:
        """Snapshot every collection with logged writes (the next open replays nothing),
        close them and release the folder's lock."""
        with self._lock:
            self._handles.clear()
        self.store.close(snapshot=True)
