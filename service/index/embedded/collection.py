"""One collection: string ids, unit vectors, JSON metadata, optional sources; durable and
searchable.

State lives in memory (dicts by id) and on disk as the latest snapshot plus the log of
changes since it. Every change is appended to the log and fsynced before it is applied
or acknowledged. The files, and how they are read back, are described in
contrastkit.service.index.embedded.recovery; a collection whose files hold no complete state is
refused (CollectionError "collection_corrupt"), never served short. So is one whose collection.json
(what the data is: its dimension, model and index) is missing, fails its checksum, or disagrees with
the snapshot or the log (contrastkit.service.index.embedded.meta): refused before recovery writes
anything.

If the disk is full while recovery writes what it owes (cutting a torn log tail, writing
a rebuilt snapshot), the collection opens read-only with status "disk_full": reads are
served, writes answer "insufficient_storage" (507) until a write finds space again.

A collection opened from a snapshot serves its rows from the file's mapping. If that file,
or snapshot.bin, changes under the running server (truncated, removed or replaced by an
operator, a restore tool, a filesystem error), the next access of the collection refuses
it (collection_corrupt; the store then lists it with the reason) instead of reading a
truncated mapping, which would kill the process with SIGBUS. See _check_files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.service.index.embedded.block_flat import BlockFlatIndex
from contrastkit.service.index.embedded.faiss_index import (
    COMPRESSED,
    VectorIndex,
    choose_kind,
    faiss_gpus,
)
from contrastkit.service.index.embedded.index_file import INDEX, SavedIndex, load_index, save_index
from contrastkit.service.index.embedded.meta import CollectionMeta, read_meta, write_meta
from contrastkit.service.index.embedded.recovery import (
    LOG,
    META,
    PREV_LOG,
    PREV_SNAP,
    SNAP,
    SNAP_TMP,
    MetaError,
    Plan,
    RecoveryRefusedError,
    plan,
)
from contrastkit.service.index.embedded.snapshot import FileId, MappedFile, Snapshot, snapshot_parts
from contrastkit.service.index.embedded.torch_flat import TorchFlatIndex
from contrastkit.service.index.embedded.wal import (
    DELETE,
    UPSERT,
    Record,
    RecordShapeError,
    WriteAheadLog,
    cut_torn_tail,
)
from contrastkit.service.index.filters import Filter
from contrastkit.service.index.fsutil import (
    fsync_dir,
    is_disk_full,
    storage_error,
    unused_path,
    write_parts,
)
from contrastkit.service.index.types import CollectionError, CollectionInfo, Hit, IndexSpec

__all__ = ["LOG", "META", "PREV_LOG", "PREV_SNAP", "SNAP", "Collection"]

log = logging.getLogger("contrastive.index")
Matcher = Callable[[dict[str, Any]], bool]
Where = Filter | Matcher | dict[str, Any]
Index = VectorIndex | TorchFlatIndex | BlockFlatIndex
FILTER_CACHE = 8  # filters whose matching ids (and vectors) are kept until the next write
FILTER_CACHE_BYTES = 32 << 20  # the vectors of a cached filter are kept up to this size
EXACT_FILTER_LIMIT = 50_000  # filtered searches over fewer candidates are exact (numpy)
SMALL_STATE = 64 << 20  # snapshots of states below this size fall due by records (see below)
# a refusal for collection.json: the data files may be whole, but what they are is unknown
META_ADVICE = (
    "the files are kept as they are: restore "
    + META
    + " from a backup (`contrastive index repair {name}` says what the files still hold)"
)


class Collection:
    """Thread-safe; every method may block on disk I/O, so call it off the event loop."""

    def __init__(
        self, folder: Path, snapshot_every: int = 20_000, device: str | None = None
    ) -> None:
        self.folder = folder
        self.device = device  # "cuda...": exact search on the GPU (see _build_index)
        self.name: str = folder.name  # what a refusal of collection.json calls it
        meta = self._read_meta()
        self.model_id: str = meta.model_id
        self.dim: int = meta.dim
        self.spec = meta.spec
        self.created_at: str = meta.created_at
        self.snapshot_every = snapshot_every
        self.status = "ok"
        self._lock = threading.RLock()
        self._vec: dict[str, np.ndarray] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._src: dict[str, str] = {}  # id -> source, only for the items that have one
        self._label: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._next_label = 0
        self._seq = self._snap_seq = 0
        self._snap_bytes = 0  # the last snapshot's size: what the next one rewrites
        self._filter_cache: OrderedDict[str, tuple[int, list[str], np.ndarray | None]] = (
            OrderedDict()
        )
        self._saved: SavedIndex | None = None  # the index saved with the snapshot, if usable
        self._snap_vectors: np.ndarray | None = None  # the opened snapshot's [n, dim] rows
        self._changed: tuple[list[int], list[int]] = ([], [])  # log replay: removed, added
        self._mapped: MappedFile | None = None  # the snapshot mapping rows may be read from
        self._snap_file: FileId | None = None  # snapshot.bin as this collection read or wrote it
        self._snap_path = str(folder / SNAP)  # a str: stat()ed on every access
        self.refused: str | None = None  # why it was refused while open (files changed)
        self._recover()
        self._index = self._open_index()

    # -- creation and recovery -----------------------------------------------------
    @staticmethod
    def create(folder: Path, name: str, model_id: str, dim: int, spec: IndexSpec) -> None:
        """A new collection's folder and its collection.json, sealed (see meta)."""
        folder.mkdir(parents=True)
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        write_meta(folder, CollectionMeta(name, model_id, dim, spec, created_at))

    def _read_meta(self) -> CollectionMeta:
        """collection.json, checked (meta.read_meta); refused (collection_corrupt) when it
        is missing, fails its checksum or holds what this version cannot serve."""
        try:
            meta = read_meta(self.folder)
        except MetaError as e:
            raise self._refuse(f"{e}; {META_ADVICE.format(name=self.name)}") from None
        if not meta.sealed:
            log.warning(
                "collection %s: %s has no checksum (written by an older version); it is "
                "checked against the snapshot and the log (`contrastive index repair %s` "
                "seals it)",
                self.name,
                META,
                self.name,
            )
        return meta

    def _recover(self) -> None:
        """Load the complete state the files hold (recovery.plan), then do the writes that
        recovery owes the disk; refuse (collection_corrupt) when there is no such state."""
        try:
            found = plan(self.folder, self.dim)
        except MetaError as e:  # a snapshot of another dimension
            raise self._refuse(f"{e}; {META_ADVICE.format(name=self.name)}") from None
        except RecoveryRefusedError as e:
            raise self._refuse(
                f"{e}; the files are kept as they are: `contrastive index repair {self.name}` "
                "salvages what is readable"
            ) from None
        for note in found.notes:
            log.warning("collection %s: %s", self.name, note)
        if found.rebuilt:
            log.error(
                "collection %s: %s is missing, corrupt or stale; rebuilding from the log "
                "(from %s, record %d)",
                self.name,
                SNAP,
                found.base.name,
                found.base.seq,
            )
        self._load(found)
        self._recovered = "rebuilt_from_log" if found.rebuilt else "ok"
        self._torn_at, self._rebuild = found.torn_at, found.rebuilt
        self._wal = WriteAheadLog(self.folder / LOG, self.dim, found.live.valid_end)
        self._wal.records = found.live_records
        try:
            self._finish_recovery()
        except CollectionError as e:
            if not is_disk_full(e):
                raise
            self.status = "disk_full"
            log.error(
                "collection %s: the disk is full; serving read-only until a write finds space",
                self.name,
            )

    def _load(self, found: Plan) -> None:
        """The plan's snapshot, then its log records, into memory (no index yet)."""
        if found.base.snapshot is not None:
            self._mapped = found.base.snapshot.mapped
            if found.base.name == SNAP:
                self._snap_file = found.base.snapshot.file
            self._load_snapshot(found.base.snapshot)
            self._adopt_saved_index(found.base.snapshot)
        removed, added = self._changed
        for scan, entry in found.chain:
            try:
                rec = scan.record(entry, self.dim)
            except RecordShapeError as e:  # refused before recovery writes anything
                raise self._refuse(
                    f"{scan.path.name}: {e}, but {META} says dim {self.dim}; "
                    + META_ADVICE.format(name=self.name)
                ) from None
            gone, new = self._apply_state(rec)
            removed += gone
            added += new
            self._seq = entry.seq

    def _adopt_saved_index(self, snap: Snapshot) -> None:
        """Use the index saved with this snapshot: its labels replace the fresh ones."""
        self._saved = load_index(
            self.folder, snap.seq, len(snap.ids), self.dim, self.spec, snap.digest
        )
        if self._saved is None:
            return
        labels = self._saved.labels.tolist()
        self._label = dict(zip(snap.ids, labels, strict=True))
        self._id_of = dict(zip(labels, snap.ids, strict=True))
        self._next_label = self._saved.next_label

    def _open_index(self) -> Index:
        """The saved index brought up to date with the log's changes, else a new build."""
        saved, self._saved = self._saved, None
        whole, self._snap_vectors = self._snap_vectors, None
        removed, added = self._changed
        self._changed = ([], [])
        if saved is None:
            if whole is None:
                return self._build_index()
            return self._build_over(whole, removed, added)
        return self._catch_up(saved.index, removed, added)

    def _build_over(self, whole: np.ndarray, removed: list[int], added: list[int]) -> Index:
        """An index over the snapshot's [n, dim] rows (labels 0..n-1, taken as they are:
        no stack of n rows) and the log's additions, then the log's removals. A flat
        index keeps the snapshot's rows without a copy and adds the log's after them; a
        trained kind is built once over all of them."""
        new = set(added)
        live_added = [lb for lb in dict.fromkeys(added) if lb in self._id_of]
        labels = np.arange(len(whole), dtype=np.int64)
        later = np.asarray(live_added, np.int64)
        later_vecs = self._stack([self._id_of[lb] for lb in live_added])
        if len(later) and choose_kind(self.spec, len(whole) + len(later)) != "flat":
            # a trained kind: built once over all of them
            vi = self._build(np.concatenate([labels, later]), np.concatenate([whole, later_vecs]))
        else:  # a flat index adds without copying what it holds (block_flat)
            vi = self._build(labels, whole)
            if len(later):
                vi.add(later, later_vecs)
        vi.remove(np.asarray([lb for lb in removed if lb not in new], np.int64))
        if vi.needs_rebuild(len(self._vec)) or vi.live != len(self._vec):
            return self._build_index()
        return vi

    def _catch_up(self, vi: Index, removed: list[int], added: list[int]) -> Index:
        """A saved index over the snapshot -> over the state: the log's removals and
        additions applied (a full rebuild when too much changed for the index kind)."""
        # a label added by the log and removed later in it was never in the index
        live_added = [lb for lb in dict.fromkeys(added) if lb in self._id_of]
        new = set(added)
        vi.remove(np.asarray([lb for lb in removed if lb not in new], np.int64))
        if live_added:
            vi.add(
                np.asarray(live_added, np.int64),
                np.stack([self._vec[self._id_of[lb]] for lb in live_added]),
            )
        if vi.needs_rebuild(len(self._vec)) or vi.live != len(self._vec):
            return self._build_index()
        log.info("collection %s: loaded its saved %s index", self.name, vi.kind)
        return vi

    def _finish_recovery(self) -> None:
        """The writes recovery owes the disk: cut log.wal's torn tail (its bytes copied
        aside first), set a bad snapshot.bin aside and write the rebuilt state as a new
        snapshot. Idempotent; raises insufficient_storage while the disk is full."""
        with contextlib.suppress(OSError):  # an unfinished snapshot: removing it frees space
            (self.folder / SNAP_TMP).unlink(missing_ok=True)
        if self._torn_at is not None:
            aside = cut_torn_tail(self.folder / LOG, self._torn_at)
            log.warning(
                "collection %s: cut a torn %d-byte tail off %s (kept in %s)",
                self.name,
                aside.stat().st_size,
                LOG,
                aside.name,
            )
            self._torn_at = None
        if self._rebuild:
            bad = self.folder / SNAP
            if bad.exists():  # set aside, so _rotate does not move it over the good prev
                try:
                    os.replace(bad, unused_path(self.folder, "snapshot.damaged", ".bin"))
                except OSError as e:
                    raise storage_error(e) from e
            self._rotate()  # the recovered state becomes the new, valid snapshot
            self._rebuild = False
        self.status = self._recovered

    def _refuse(self, why: str) -> CollectionError:
        self.status = "refused"
        return CollectionError("collection_corrupt", f"collection {self.name!r} refused: {why}")

    # -- files changed under the running server --------------------------------------------
    def _check_files(self) -> None:
        """Raise collection_corrupt, refusing the collection for good, when its snapshot
        files changed under it; called under the lock before each access of its rows
        (search, get, scroll, write, snapshot).

        Two checks, a syscall each: the mapped snapshot file still has the mapping's size
        (a truncated one raises SIGBUS on access, killing the process: see
        snapshot.MappedFile), and snapshot.bin is still the file this collection read or
        wrote, of the same size (one replaced or removed would no longer hold what is
        served, and the next snapshot would move it over snapshot.prev.bin). Nothing is
        repaired and no file is touched: a restart recovers the collection from its files
        (from snapshot.prev.bin and the logs when snapshot.bin is damaged) or refuses it.

        A truncation between this check and the read of the rows (the window of one
        search) is not caught: that still raises SIGBUS."""
        if self.refused is None:
            why = self._files_changed()
            if why is None:
                return
            self.status = "refused"
            self.refused = (
                f"collection {self.name!r} refused: {why}; its files are kept as they are: "
                "restart the server to recover it from them "
                f"(`contrastive index repair {self.name}` salvages what is readable)"
            )
            log.error("%s", self.refused)
        raise CollectionError("collection_corrupt", self.refused)

    def _files_changed(self) -> str | None:
        if self._mapped is not None:
            what = self._mapped.changed()
            if what is not None:
                return (
                    f"{self._mapped.name} (mapped since the open) changed under the server ({what})"
                )
        if self._snap_file is None:
            return None
        try:
            st = os.stat(self._snap_path)
        except FileNotFoundError:
            return f"{SNAP} was removed under the server"
        except OSError as e:
            return f"{SNAP} cannot be read ({e})"
        was = self._snap_file
        if st.st_ino == was.ino and st.st_dev == was.dev and st.st_size == was.size:
            return None  # the usual case, kept to a stat and three comparisons
        now = FileId.of(st)
        if (now.dev, now.ino) != (was.dev, was.ino):
            return (
                f"{SNAP} was replaced under the server (another file of {now.size} bytes "
                f"where {was.size} bytes were read or written)"
            )
        if now.size != was.size:
            how = "truncated" if now.size < was.size else "grown"
            return f"{SNAP} was {how} under the server ({was.size} bytes, now {now.size} bytes)"
        return None

    def check_files(self, wait: bool = True) -> str | None:
        """Why the collection is refused (its files changed under it), else None; with
        wait=False, None at once when another call holds the collection."""
        if not self._lock.acquire(blocking=wait):
            return self.refused
        try:
            self._check_files()
        except CollectionError as e:
            return e.message
        finally:
            self._lock.release()
        return None

    def _reset(self) -> None:
        self._vec.clear()
        self._meta.clear()
        self._src.clear()
        self._label.clear()
        self._id_of.clear()
        self._seq = self._snap_seq = 0

    def _load_snapshot(self, snap: Snapshot) -> None:
        """The snapshot's rows as labels 0..n-1, in its order: what `_put` for each row
        would give, built in bulk (a snapshot's ids are unique; 4 dict builds instead of
        n Python calls: a third of a 1M-item open)."""
        self._reset()
        n = len(snap.ids)
        self._vec = dict(zip(snap.ids, snap.vectors, strict=True))  # read-only row views
        self._meta = dict(zip(snap.ids, snap.metadata, strict=True))
        self._src = {i: s for i, s in snap.sources.items() if i in self._meta}
        self._label = dict(zip(snap.ids, range(n), strict=True))
        self._id_of = dict(zip(range(n), snap.ids, strict=True))
        if not len(self._vec) == n:  # the checksum matched, so this is a file we wrote
            raise self._refuse(f"{SNAP}: {n - len(self._vec)} ids repeat")
        self._next_label = n
        self._seq = self._snap_seq = snap.seq
        self._snap_vectors = snap.vectors
        self._snap_bytes = snap.vectors.nbytes

    # -- state changes ---------------------------------------------------------------
    def _put(
        self, id_: str, vec: np.ndarray, meta: dict[str, Any], source: str | None
    ) -> tuple[int | None, int]:
        old = self._label.get(id_)
        if source is None:  # an upsert replaces the whole item, its source included
            self._src.pop(id_, None)
        else:
            self._src[id_] = source
        if old is not None:
            del self._id_of[old]
        label = self._next_label
        self._next_label += 1
        self._vec[id_], self._meta[id_], self._label[id_], self._id_of[label] = (
            vec,
            meta,
            label,
            id_,
        )
        return old, label

    def _drop(self, id_: str) -> int | None:
        label = self._label.pop(id_, None)
        if label is not None:
            del self._id_of[label], self._vec[id_], self._meta[id_]
            self._src.pop(id_, None)
        return label

    def _apply_state(self, rec: Record) -> tuple[list[int], list[int]]:
        """Apply to the dicts -> (labels to remove from the index, labels added)."""
        removed, added = [], []
        if rec.op == UPSERT:
            assert rec.vectors is not None
            sources = rec.sources or [None] * len(rec.ids)
            for i, id_ in enumerate(rec.ids):
                old, new = self._put(id_, rec.vectors[i], rec.metadata[i], sources[i])
                if old is not None:
                    removed.append(old)
                added.append(new)
        else:
            removed = [lb for lb in (self._drop(i) for i in rec.ids) if lb is not None]
        return removed, added

    def _write(
        self,
        op: int,
        ids: list[str],
        meta: list[dict[str, Any]],
        vecs: np.ndarray | None,
        sources: list[str | None] | None = None,
    ) -> None:
        with self._lock:
            if self.status == "refused" and self.refused is None:
                raise CollectionError("collection_corrupt", f"collection {self.name!r} is refused")
            self._check_files()
            if self.status == "disk_full":  # read-only: first the writes recovery owes
                self._finish_recovery()
            rec = Record(op, self._seq + 1, ids, meta, vecs, sources)
            self._wal.append(rec)  # durable before anything changes
            self._seq = rec.seq
            removed, added = self._apply_state(rec)
            self._index.remove(np.asarray(removed, np.int64))
            if added:
                self._index.add(
                    np.asarray(added, np.int64),
                    np.stack([self._vec[self._id_of[a]] for a in added]),
                )
            if self._index.needs_rebuild(len(self._vec)):
                self._index = self._build_index()
            if self._snapshot_due():
                try:
                    self.snapshot()
                except CollectionError as e:  # the write above is durable: still a success
                    log.error("collection %s: snapshot failed (%s); will retry", self.name, e)

    def upsert(
        self,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[dict[str, Any]],
        sources: list[str | None] | None = None,
    ) -> int:
        """Add or replace; `vectors` float32 [n, dim], unit norm; `sources` one per id
        (None: none has one). Durable on return, the sources too (they are in the log).

        Within one call a repeated id keeps its last occurrence."""
        last = {id_: i for i, id_ in enumerate(ids)}
        keep = sorted(last.values())
        self._write(
            UPSERT,
            [ids[i] for i in keep],
            [metadata[i] for i in keep],
            np.ascontiguousarray(vectors[keep], np.float32),
            None if sources is None else [sources[i] for i in keep],
        )
        return len(keep)

    def delete(self, ids: list[str]) -> int:
        """Remove ids (unknown ones are ignored) -> how many were present. Durable on return."""
        with self._lock:
            present = [i for i in dict.fromkeys(ids) if i in self._label]
            if present:
                self._write(DELETE, present, [], None)
            return len(present)

    # -- snapshots ---------------------------------------------------------------------
    def _snapshot_due(self) -> bool:
        """Whether the log has grown enough to be folded into a new snapshot.

        A snapshot rewrites the whole state (S bytes), so it falls due by what the log
        (L bytes, R records) holds against S: once L >= max(S, SMALL_STATE), so a write
        costs at most twice what it changes, amortised, and an open replays at most the
        state's own size; or once R >= snapshot_every (the per-record cost of a replay),
        for a state over SMALL_STATE only when L >= S / 8 too, so that a stream of tiny
        writes into a large collection does not rewrite it every snapshot_every records
        (at 1M x 384 that was 1.5 GB per 20,000 single-vector upserts: 50x their size)."""
        size, state = self._wal.size, self._snap_bytes
        if size >= max(state, SMALL_STATE):
            return True
        if self._wal.records < self.snapshot_every:
            return False
        return state < SMALL_STATE or size * 8 >= state

    def snapshot(self) -> None:
        """Write the state durably, then rotate the log (the old one is kept one round)."""
        with self._lock:
            self._check_files()
            if self.status == "disk_full":
                self._finish_recovery()
            self._wal.settle()  # no bytes of a failed append may move into log.prev.wal
            self._rotate()

    def _rotate(self) -> None:
        """New snapshot.bin; the old one -> snapshot.prev.bin; log.wal -> log.prev.wal.

        Crash-safe order: the new snapshot is complete and fsynced in a temp file before
        anything is renamed, and the log moves only after the new snapshot is in place.
        After a crash at any point the files read back to this state (recovery.plan: at
        worst from the previous snapshot and both logs)."""
        ids = list(self._vec)
        rows, meta = [self._vec[i] for i in ids], [self._meta[i] for i in ids]
        sources = dict(self._src)
        snap_path, log_path, tmp = self.folder / SNAP, self.folder / LOG, self.folder / SNAP_TMP
        # a full disk fails here, before any rename
        snap_bytes = write_parts(tmp, snapshot_parts(self._seq, self.dim, ids, meta, rows, sources))
        del rows, meta, sources
        self._wal.close()
        try:
            written = FileId.of(os.stat(tmp))
            self._snap_file = None  # until the new one is in place
            if snap_path.exists():
                os.replace(snap_path, self.folder / PREV_SNAP)
            os.replace(tmp, snap_path)
            self._snap_file = written
            fsync_dir(self.folder)
            if log_path.exists():
                os.replace(log_path, self.folder / PREV_LOG)
            self._wal = WriteAheadLog(log_path, self.dim, 0)  # a fresh log from here on
            fsync_dir(self.folder)
        except OSError as e:
            raise storage_error(e) from e
        self._snap_seq = self._seq
        self._snap_bytes = snap_bytes
        self._save_index(ids)

    def _save_index(self, ids: list[str]) -> None:
        """Save the HNSW/IVF index beside the snapshot just written (of `ids`, in its order;
        derived data: when it cannot be written, the next open rebuilds it, so the write
        still succeeds)."""
        index = getattr(self, "_index", None)  # None while recovery rewrites the snapshot
        if not isinstance(index, VectorIndex) or index.kind == "flat":
            with contextlib.suppress(OSError):  # a stale one is only skipped: space back
                (self.folder / INDEX).unlink(missing_ok=True)
            return
        labels = np.fromiter((self._label[i] for i in ids), np.int64, len(ids))
        try:
            save_index(self.folder, self._snap_seq, labels, index, self._next_label)
        except CollectionError as e:
            log.error("collection %s: index not saved (%s); it is rebuilt on open", self.name, e)

    # -- reads ---------------------------------------------------------------------------
    def _build_index(self) -> Index:
        """A new index over every vector of the state."""
        labels = np.fromiter((self._label[i] for i in self._vec), np.int64, len(self._vec))
        return self._build(labels, self._stack(list(self._vec)))

    def _build(self, labels: np.ndarray, vecs: np.ndarray) -> Index:
        """A new index of `labels` int64 [n] -> `vecs` float32 [n, dim]."""
        if (
            self.device
            and self.device.startswith("cuda")
            and choose_kind(self.spec, len(labels)) == "flat"
        ):
            if faiss_gpus() == 0:  # faiss-gpu absent (the usual case): exact search in torch
                return TorchFlatIndex.build(
                    self.dim, self.spec, labels, vecs, torch.device(self.device)
                )
            return VectorIndex.build(self.dim, self.spec, labels, vecs, gpu=True)
        if choose_kind(self.spec, len(labels)) == "flat":
            return BlockFlatIndex.build(self.dim, self.spec, labels, vecs)
        return VectorIndex.build(self.dim, self.spec, labels, vecs)

    def get(self, id_: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        with self._lock:
            self._check_files()
            if id_ not in self._vec:
                return None
            return self._vec[id_].copy(), dict(self._meta[id_])

    def source(self, id_: str) -> str | None:
        """The item's source, None when it has none (or there is no such item)."""
        return self._src.get(id_)

    def search(self, queries: np.ndarray, k: int, where: Where | None = None) -> list[list[Hit]]:
        """queries float32 [q, dim] -> for each, up to k hits, best first.

        where: a `Filter`, a dict of field: value that must all be equal, or any
        metadata -> bool (not cached). Filters are applied before the k best are taken:
        k hits come back whenever k items match."""
        with self._lock:
            self._check_files()
            if not self._vec:
                return [[] for _ in range(len(queries))]
            if where:
                return self._filtered(queries, k, where)
            scores, labels = self._index_search(queries, k)
            return [self._hits(s, lb) for s, lb in zip(scores, labels, strict=True)]

    def _filtered(self, queries: np.ndarray, k: int, where: Where) -> list[list[Hit]]:
        ids, mat = self._matching(where)
        if not ids:
            return [[] for _ in range(len(queries))]
        if mat is not None:  # exact, and never starved by a graph index
            sims = queries @ mat.T  # [q, m]
            kk = min(k, len(ids))
            top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            out = []
            for q, row in enumerate(top):
                best = row[np.argsort(-sims[q, row], kind="stable")]
                out.append([self._hit(ids[j], float(sims[q, j])) for j in best])
            return out
        allowed = np.fromiter((self._label[i] for i in ids), np.int64, len(ids))
        scores, labels = self._index_search(queries, k, allowed)
        return [self._hits(s, lb) for s, lb in zip(scores, labels, strict=True)]

    def _matching(self, where: Where) -> tuple[list[str], np.ndarray | None]:
        """The ids the filter matches, and their vectors [m, dim] when few enough for an
        exact search. Cached per filter until the next write: a filter repeated across
        searches (the usual case) costs its metadata scan once."""
        key = None if callable(where) and not isinstance(where, Filter) else repr(where)
        hit = self._filter_cache.get(key) if key is not None else None
        if key is not None and hit is not None and hit[0] == self._seq:
            self._filter_cache.move_to_end(key)
            ids, mat = hit[1], hit[2]
            if mat is None and len(ids) <= EXACT_FILTER_LIMIT:  # too large to have been kept
                mat = self._stack(ids)
            return ids, mat
        matches = _matcher(where)
        ids = [i for i, m in self._meta.items() if matches(m)]
        mat = self._stack(ids) if len(ids) <= EXACT_FILTER_LIMIT else None
        if key is not None:  # the vectors too, while they are small
            small = mat is not None and mat.nbytes <= FILTER_CACHE_BYTES
            self._filter_cache[key] = (self._seq, ids, mat if small else None)
            while len(self._filter_cache) > FILTER_CACHE:
                self._filter_cache.popitem(last=False)
        return ids, mat

    def _stack(self, ids: list[str]) -> np.ndarray:
        return np.stack([self._vec[i] for i in ids]) if ids else np.zeros((0, self.dim), np.float32)

    def _index_search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The index's k best (scores [q, k], labels [q, k], -1: none). A compressed
        index's scores are approximate: it gives refine * k candidates, ranked here again by
        the exact inner product with the stored vectors."""
        q = np.ascontiguousarray(queries, np.float32)
        refine = self.spec.refine if self._index.kind in COMPRESSED else 0
        if not refine:
            return self._index.search(q, k, allowed)
        _, cand = self._index.search(q, k * refine, allowed)
        scores = np.full((len(q), k), -np.inf, np.float32)
        labels = np.full((len(q), k), -1, np.int64)
        for r, row in enumerate(cand):
            live = [int(lb) for lb in row if lb >= 0 and int(lb) in self._id_of]
            if not live:
                continue
            exact = np.stack([self._vec[self._id_of[lb]] for lb in live]) @ q[r]
            best = np.argsort(-exact, kind="stable")[:k]
            scores[r, : len(best)] = exact[best]
            labels[r, : len(best)] = np.asarray(live, np.int64)[best]
        return scores, labels

    def _hits(self, scores: np.ndarray, labels: np.ndarray) -> list[Hit]:
        out = []
        for s, lb in zip(scores, labels, strict=True):
            id_ = self._id_of.get(int(lb))
            if lb >= 0 and id_ is not None:
                out.append(self._hit(id_, float(s)))
        return out

    def _hit(self, id_: str, score: float) -> Hit:
        return Hit(id_, score, dict(self._meta[id_]), self._src.get(id_))

    @property
    def count(self) -> int:
        return len(self._vec)

    @property
    def log_records(self) -> int:
        """Records in the log since the last snapshot."""
        return self._wal.records

    def info(self) -> CollectionInfo:
        with self._lock:
            return CollectionInfo(
                self.name,
                self.model_id,
                self.dim,
                len(self._vec),
                self.spec,
                self._index.kind,
                self.created_at,
                self.status,
                self._wal.records,
            )

    def close(self) -> None:
        with self._lock:
            self._wal.close()


def _matcher(where: Where) -> Matcher:
    """A predicate on metadata; a dict means every field equals its value."""
    if isinstance(where, Filter):
        return where.matches
    if callable(where):
        return where
    items = list(where.items())
    return lambda m: all(m.get(f) == v for f, v in items)
