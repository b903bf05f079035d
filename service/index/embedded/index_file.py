"""The FAISS index saved beside a collection's snapshot, so a restart loads it, not rebuilds.

`index.faiss` is derived data: the snapshot and the log hold every vector, and the index
can always be rebuilt from them. It is saved with each snapshot (HNSW and IVF only: a flat
index is rebuilt as fast as it is read) and used on open only when it belongs to the very
snapshot the collection opened from (the sha256 of that snapshot file, its sequence number
and item count) and its bytes match the sha256 in its header. Anything else (missing,
stale, another collection's, another kind, damaged) means a rebuild from the vectors; a
damaged file is moved aside, never loaded.

Nothing reaches FAISS's reader before the checksum matched: on flipped bytes it does not
only raise, it also allocates what the garbage says (std::bad_alloc as MemoryError, or
gigabytes taken and filled for minutes: tests/service/index/embedded/
test_index_file_attacks.py). What FAISS reads back is checked against the header too
(kind, dimension, vector count) before it is served.

Layout: MAGIC, u64 header length, a JSON header, then the payload:
    labels    int64 [count]       the label of the snapshot's i-th id
    tombstone int64 [tombstones]  HNSW labels removed but still in the graph
    index     uint8 [...]         faiss.serialize_index of the index
The header holds seq, count, kind, dim, next_label, the payload's sizes, the sha256 of the
snapshot it was saved with (`snapshot`: files saved before it was recorded are rebuilt
once) and its own sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from contrastkit.service.index.embedded.faiss_index import INVERTED, VectorIndex
from contrastkit.service.index.embedded.recovery import SNAP
from contrastkit.service.index.embedded.snapshot import snapshot_digest
from contrastkit.service.index.fsutil import fsync_dir, storage_error, unused_path
from contrastkit.service.index.types import IndexSpec

INDEX = "index.faiss"
MAGIC = b"CTRIDX1\n"
CHUNK = 64 << 20  # bytes per write call and per hash update
# The header's fields and their types: a header that checks out has each of them.
FIELDS = {
    "seq": int,
    "count": int,
    "kind": str,
    "dim": int,
    "next_label": int,
    "tombstones": int,
    "index_bytes": int,
    "snapshot": str,
}
# What FAISS must read back for each kind that is saved (flat and the HNSWs inside an
# IndexIDMap2, the IVFs bare: faiss_index.VectorIndex._wrap).
STRUCTURE = {
    "ivf": faiss.IndexIVFFlat,
    "ivfpq": faiss.IndexIVFPQ,
    "hnsw": faiss.IndexHNSWFlat,
    "hnsw_sq8": faiss.IndexHNSWSQ,
}

log = logging.getLogger("contrastive.index")


@dataclass
class SavedIndex:
    """An index loaded from disk: labels[i] is the label of the snapshot's i-th id."""

    index: VectorIndex
    labels: np.ndarray  # int64 [count]
    next_label: int


def save_index(
    folder: Path, seq: int, labels: np.ndarray, vi: VectorIndex, next_label: int
) -> None:
    """Write `vi` (its labels[i] for the snapshot's i-th id) as folder/INDEX, atomically,
    bound to the snapshot file just written (folder/SNAP, of sequence number `seq`).

    Raises CollectionError on an I/O failure (a full disk): the caller goes on without it."""
    try:
        snapshot = snapshot_digest(folder / SNAP).hex()
    except OSError as e:
        raise storage_error(e) from e
    blob = faiss.serialize_index(vi.index)  # uint8 [bytes]
    tomb = np.fromiter(sorted(vi.tombstones), np.int64, len(vi.tombstones))
    parts = [np.ascontiguousarray(labels, np.int64).view(np.uint8), tomb.view(np.uint8), blob]
    fields = {
        "seq": seq,
        "count": len(labels),
        "kind": vi.kind,
        "dim": vi.dim,
        "next_label": next_label,
        "tombstones": len(tomb),
        "index_bytes": len(blob),
        "snapshot": snapshot,
    }
    digest = hashlib.sha256(_canonical(fields))
    for p in parts:
        digest.update(p.data)
    head = json.dumps({**fields, "sha256": digest.hexdigest()}).encode()
    path, tmp = folder / INDEX, folder / f".{INDEX}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + head)
            for p in parts:
                for start in range(0, len(p), CHUNK):
                    f.write(p[start : start + CHUNK].data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise storage_error(e) from e


def load_index(
    folder: Path, seq: int, count: int, dim: int, spec: IndexSpec, snapshot: bytes
) -> SavedIndex | None:
    """The saved index of the snapshot whose file's sha256 is `snapshot` (sequence number
    `seq`, `count` items), or None (rebuild) when there is none, it belongs to another
    snapshot, or it is damaged (then it is moved aside)."""
    path = folder / INDEX
    with contextlib.suppress(OSError):  # a save cut short by a crash: never committed
        (folder / f".{INDEX}.tmp").unlink(missing_ok=True)
    if not path.exists():
        return None
    try:
        header, payload = _read(path)
    except (OSError, ValueError, RecursionError) as e:
        return _set_aside(path, f"unreadable ({e})")
    # the sha256 covers the header's fields too: a flipped digit in seq is damage, not age
    fields = {k: v for k, v in header.items() if k != "sha256"}
    digest = hashlib.sha256(_canonical(fields))
    digest.update(payload)
    if digest.hexdigest() != header.get("sha256"):
        return _set_aside(path, "its sha256 does not match")
    wrong = next((k for k, t in FIELDS.items() if not isinstance(fields.get(k), t)), None)
    if wrong is not None:  # a file of an older layout (no "snapshot"), or not ours
        log.info("%s: no %r in its header; rebuilding the index", path, wrong)
        return None
    mine = (fields["seq"], fields["count"], fields["dim"]) == (seq, count, dim)
    if not mine or fields["snapshot"] != snapshot.hex():
        log.info("%s: saved for another snapshot; rebuilding the index", path)
        return None
    n, t = count * 8, fields["tombstones"] * 8
    if len(payload) != n + t + fields["index_bytes"]:
        return _set_aside(path, "its size does not match its header")
    try:
        index = faiss.deserialize_index(np.frombuffer(payload, np.uint8, offset=n + t))
    except Exception as e:  # RuntimeError; MemoryError when a size in it is garbage
        return _set_aside(path, f"FAISS cannot read it ({type(e).__name__}: {e})")
    problem = _mismatch(index, fields["kind"], dim, count + fields["tombstones"])
    if problem is not None:
        return _set_aside(path, problem)
    vi = VectorIndex.wrap(dim, spec, fields["kind"], index)
    vi.tombstones = {int(x) for x in np.frombuffer(payload, np.int64, t // 8, offset=n)}
    labels = np.frombuffer(payload, np.int64, count).copy()
    return SavedIndex(vi, labels, fields["next_label"])


def _mismatch(index: faiss.Index, kind: str, dim: int, vectors: int) -> str | None:
    """Why the index FAISS read back is not the `kind` index of `vectors` `dim`-d vectors
    its header describes, or None. Searching a 32-d index with 16-d queries would read
    past their rows."""
    if isinstance(index, faiss.IndexIDMap2):
        mapped, inner = True, faiss.downcast_index(index.index)
    else:
        mapped, inner = False, index
    want = STRUCTURE.get(kind)
    if want is None or type(inner) is not want or mapped == (kind in INVERTED):
        return f"it holds a {type(inner).__name__}, not the {kind} index its header names"
    if index.d != dim:
        return f"its index is {index.d}-d, the collection {dim}-d"
    if index.ntotal != vectors:
        return f"its index holds {index.ntotal} vectors, its header says {vectors}"
    return None


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True).encode()


def _read(path: Path) -> tuple[dict[str, Any], memoryview]:
    """(header, payload): the payload a view of the file's bytes, not a copy of them."""
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise ValueError("not an index file")
    (size,) = struct.unpack_from("<Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    header = json.loads(data[start : start + size])
    if not isinstance(header, dict):
        raise ValueError("its header is not an object")
    return header, memoryview(data)[start + size :]


def _set_aside(path: Path, why: str) -> SavedIndex | None:
    """A damaged index file is kept for inspection under another name, never loaded."""
    aside = unused_path(path.parent, "index.damaged", ".faiss")
    try:
        os.replace(path, aside)
    except OSError:
        aside = path
    log.error("%s is damaged: %s; kept as %s, rebuilding the index from the vectors", path, why,
              aside.name)  # fmt: skip
    return None
