"""The FAISS index saved beside a collection's snapshot, so a restart loads it, not rebuilds.

`index.faiss` is derived data: the snapshot and the log hold every vector, and the index
can always be rebuilt from them. It is saved with each snapshot (HNSW and IVF only: a flat
index is rebuilt as fast as it is read) and used on open only when it belongs to the very
snapshot the collection opened from (same sequence number and item count) and its bytes
match the sha256 in its header. Anything else (missing, stale, another kind, damaged) means
a rebuild from the vectors; a damaged file is moved aside, never loaded.

Layout: MAGIC, u64 header length, a JSON header, then the payload:
    labels    int64 [count]       the label of the snapshot's i-th id
    tombstone int64 [tombstones]  HNSW labels removed but still in the graph
    index     uint8 [...]         faiss.serialize_index of the index
The header holds seq, count, kind, next_label, the payload's sizes and its sha256.
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

from service.index.embedded.faiss_index import VectorIndex
from service.index.fsutil import fsync_dir, storage_error, unused_path
from service.index.types import IndexSpec

INDEX = "index.faiss"
MAGIC = b"CTRIDX1\n"
CHUNK = 64 << 20  # bytes per write call and per hash update

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
    """Write `vi` (its labels[i] for the snapshot's i-th id) as folder/INDEX, atomically.

    Raises CollectionError on an I/O failure (a full disk): the caller goes on without it."""
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


def load_index(folder: Path, seq: int, count: int, dim: int, spec: IndexSpec) -> SavedIndex | None:
    """The saved index of snapshot `seq` with `count` items, or None (rebuild) when there is
    none, it belongs to another snapshot, or it is damaged (then it is moved aside)."""
    path = folder / INDEX
    with contextlib.suppress(OSError):  # a save cut short by a crash: never committed
        (folder / f".{INDEX}.tmp").unlink(missing_ok=True)
    if not path.exists():
        return None
    try:
        header, payload = _read(path)
    except (OSError, ValueError) as e:
        return _set_aside(path, f"unreadable ({e})")
    # the sha256 covers the header's fields too: a flipped digit in seq is damage, not age
    fields = {k: v for k, v in header.items() if k != "sha256"}
    digest = hashlib.sha256(_canonical(fields))
    digest.update(payload)
    if digest.hexdigest() != header.get("sha256"):
        return _set_aside(path, "its sha256 does not match")
    if header["seq"] != seq or header["count"] != count or header["dim"] != dim:
        log.info("%s: saved for another snapshot; rebuilding the index", path)
        return None
    n, t = count * 8, int(header["tombstones"]) * 8
    if len(payload) != n + t + int(header["index_bytes"]):
        return _set_aside(path, "its size does not match its header")
    try:
        index = faiss.deserialize_index(np.frombuffer(payload, np.uint8, offset=n + t))
    except RuntimeError as e:
        return _set_aside(path, f"FAISS cannot read it ({e})")
    vi = VectorIndex.wrap(dim, spec, str(header["kind"]), index)
    vi.tombstones = {int(x) for x in np.frombuffer(payload, np.int64, t // 8, offset=n)}
    labels = np.frombuffer(payload, np.int64, count).copy()
    return SavedIndex(vi, labels, int(header["next_label"]))


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
