"""Snapshot files: a collection's whole state, checksummed, written atomically.

Layout: b"CSNAP1" | u32 header length | header JSON (seq, dim, ids, metadata, and
"sources": {id: source} for the items that have one, absent when none has), padded
with spaces so that the vectors start on a ROW_ALIGN-byte boundary | float32 vectors
[n, dim] | sha256 of everything before it (32 bytes).

The alignment matters: the vectors are searched in place, mapped, and numpy hands rows
at an offset that is not a multiple of 4 to its slow unaligned loops instead of BLAS
(exact search over a reopened collection was 10-60x slower). Snapshots written before
the padding are still read: their rows are copied once into aligned memory on open.

A mapped file must keep its size while it is mapped: a page past a truncated end raises
SIGBUS on access, which kills the whole process (every collection, every request in
flight, nothing logged). Snapshot files are never written after their rename, but an
operator, a restore tool or a filesystem error may still truncate one. So each snapshot
read keeps a `MappedFile`: the collection calls `MappedFile.changed` before each access
of the rows and refuses itself when the file has changed (see Collection._check_files).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from contrastkit.service.index.fsutil import atomic_write

MAGIC = b"CSNAP1"
CHUNK = 64 << 20  # bytes of vectors per write call and per hash update
ROW_ALIGN = 64  # the vectors' file offset (and so their address in the map): a cache line
_LEN = struct.Struct("<I")

log = logging.getLogger("contrastive.index")


class CorruptSnapshotError(ValueError):
    """The snapshot's checksum or structure is wrong: it must not be served."""


class SnapshotDimError(CorruptSnapshotError):
    """The snapshot is intact (its checksum holds) but its vectors are `found`-d, not the
    dimension asked for: the file is fine, what asked for it is wrong (recovery.MetaError)."""

    def __init__(self, message: str, found: object) -> None:
        super().__init__(message)
        self.found = found


@dataclass(frozen=True)
class FileId:
    """Which file a path named, and its size: os.stat's (st_dev, st_ino, st_size)."""

    dev: int
    ino: int
    size: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileId:
        return cls(st.st_dev, st.st_ino, st.st_size)


class MappedFile:
    """A snapshot file mapped read-only, and what it was when mapped.

    Why a size check, and not a copy of the rows or a SIGBUS handler: copying 1.5 GB of
    rows out at open (1M x 384) doubled the time to read and check the file (measured at
    100k x 384 on a 2-core VM: 0.17-0.22 s mapped and hashed, 0.38-0.60 s read into
    anonymous memory and hashed, overlapped in two threads or not), which would take a
    restart to the first search past its 5 s target; a scan that pread()s the rows into
    buffers on each search copies them on every search (exact search must run at memory
    speed); a SIGBUS cannot be handled from Python (the faulting load is retried in C,
    never reaching a Python handler); MAP_PRIVATE, mlock or MAP_POPULATE do not help (the
    kernel unmaps the truncated pages from every mapping). A fstat of the mapped file
    (mmap.size(): the mapping holds its own descriptor) costs a few microseconds, once
    per search or read, not per row.

    What it leaves: a truncation between the check and the read of the rows (a window
    of one search, milliseconds to a tenth of a second at 1M rows), or during the open's
    checksum pass over the mapping, still raises SIGBUS. Checking before each access
    turns the usual case (the file damaged while idle, or between requests) into a
    refusal of one collection."""

    def __init__(self, data: mmap.mmap, file: FileId, name: str) -> None:
        self._data = data  # holds a duplicate of the file's descriptor (mmap.size fstats it)
        self.name = name  # the file's name when it was mapped
        self.file = file  # the mapped file as it was mapped: its size is the mapping's length

    def changed(self) -> str | None:
        """Why the mapped file no longer has the size of the mapping, else None."""
        try:
            now = self._data.size()
        except (OSError, ValueError) as e:  # ValueError: the map was closed
            return f"its size cannot be read ({e})"
        if now != self.file.size:
            what = "truncated" if now < self.file.size else "grown"
            return f"{what}: {self.file.size} bytes were mapped, the file now holds {now} bytes"
        return None


@dataclass
class Snapshot:
    seq: int  # the last log sequence number the snapshot includes
    ids: list[str]
    metadata: list[dict[str, Any]]
    vectors: np.ndarray  # float32 [n, dim]
    # the file read and, while the rows are views into its mapping, the mapping to check
    file: FileId | None = None
    mapped: MappedFile | None = None
    digest: bytes = b""  # the file's sha256 (its last 32 bytes) when read from one
    sources: dict[str, str] = field(default_factory=dict)  # id -> source, for those with one


def snapshot_parts(
    seq: int,
    dim: int,
    ids: list[str],
    metadata: list[dict[str, Any]],
    rows: Sequence[np.ndarray] | np.ndarray,
    sources: dict[str, str] | None = None,
) -> Iterator[bytes | memoryview]:
    """The bytes of a snapshot of `rows` (float32 [dim] each, for ids[i]) in parts, the
    checksum last. The rows are stacked CHUNK bytes at a time into one reused buffer, so
    writing a snapshot never holds another copy of the state (at 1M x 384, stacking all
    rows at once and joining the file's bytes had cost 5.5 s in page faults alone). Each
    part is valid until the next is asked for: write it (or copy it) at once."""
    fields: dict[str, Any] = {"seq": seq, "dim": dim, "ids": ids, "metadata": metadata}
    if sources:  # absent when none: such a snapshot is byte for byte what it always was
        fields["sources"] = sources
    header = json.dumps(fields).encode()
    header += b" " * (-(len(MAGIC) + _LEN.size + len(header)) % ROW_ALIGN)  # JSON ignores it
    digest = hashlib.sha256()
    head = MAGIC + _LEN.pack(len(header)) + header
    digest.update(head)
    yield head
    step = max(1, CHUNK // (4 * dim))
    buf = np.empty((min(step, len(rows)), dim), "<f4")
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        out = buf[: len(chunk)]
        np.stack(chunk, out=out)  # type: ignore[arg-type]  # a list or an array
        part = out.reshape(-1).view(np.uint8).data
        digest.update(part)
        yield part
    yield digest.digest()


def encode_snapshot(snap: Snapshot) -> bytes:
    """The snapshot file's bytes in one piece (small snapshots: repair, tests)."""
    parts = snapshot_parts(
        snap.seq, int(snap.vectors.shape[1]), snap.ids, snap.metadata, snap.vectors, snap.sources
    )
    return b"".join(bytes(p) for p in parts)


def write_snapshot(path: Path, snap: Snapshot) -> None:
    """Write `snap` to `path` atomically (temp file, fsync, rename, fsync the folder)."""
    atomic_write(path, encode_snapshot(snap))


def _loads(raw: bytes) -> Any:
    """JSON -> Python, by orjson (about 3x faster on a 1M-id header) unless it refuses
    what the standard library wrote and reads (NaN, integers past 64 bits)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _map(path: Path) -> tuple[mmap.mmap | bytes, FileId]:
    """The file's bytes, mapped read-only rather than read: the vectors are served from
    the page cache in place (no 1.5 GB copy at 1M x 384, and clean pages the kernel may
    evict), and the file as it was mapped. A snapshot file is never written after its
    rename: a new one is a new file, so a mapped one keeps its bytes even once it is
    renamed or deleted; a truncation is what MappedFile.changed is there to catch."""
    with open(path, "rb") as f:
        file = FileId.of(os.fstat(f.fileno()))
        if file.size == 0:
            return b"", file
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_SEQUENTIAL"):  # the checksum reads it front to back once
        data.madvise(mmap.MADV_SEQUENTIAL)
    return data, file


def _checked(path: Path) -> tuple[mmap.mmap | bytes, FileId, memoryview, dict[str, Any]]:
    """Map a snapshot file and check its checksum -> (its bytes, the file, the vectors'
    bytes, the header: seq, dim, ids, metadata); CorruptSnapshotError if it fails."""
    data, file = _map(path)
    # memoryview slices: a snapshot is large, and each bytes slice would copy it
    body, digest = memoryview(data)[:-32], bytes(data[-32:])
    if len(data) < len(MAGIC) + _LEN.size + 32 or hashlib.sha256(body).digest() != digest:
        raise CorruptSnapshotError(f"{path.name}: checksum mismatch (truncated or corrupt)")
    if bytes(data[: len(MAGIC)]) != MAGIC:
        raise CorruptSnapshotError(f"{path.name}: not a snapshot file")
    (hlen,) = _LEN.unpack_from(body, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    try:  # the checksum matched, so this is a file we wrote; checked all the same
        header = _loads(bytes(body[start : start + hlen]))
        header["seq"], header["ids"] = int(header["seq"]), list(header["ids"])
        header["metadata"] = list(header["metadata"])
        header["sources"] = dict(header.get("sources") or {})  # older snapshots have none
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptSnapshotError(f"{path.name}: unreadable header ({e})") from e
    return data, file, body[start + hlen :], header


def read_header(path: Path) -> dict[str, Any]:
    """A snapshot's header (seq, dim, ids, metadata), its checksum checked, whatever its
    dimension: what the file says it holds (`contrastive index repair` reports it)."""
    return _checked(path)[3]


def read_snapshot(path: Path, dim: int) -> Snapshot:
    """Read and check a snapshot file; CorruptSnapshotError if it must not be served
    (SnapshotDimError: intact, but its vectors are not `dim`-d)."""
    data, file, raw, header = _checked(path)
    seq, ids, metadata = header["seq"], header["ids"], header["metadata"]
    digest = bytes(data[-32:])  # checked by _checked: this very state's sha256
    if header.get("dim") != dim:
        raise SnapshotDimError(
            f"{path.name}: dimension {header.get('dim')} != {dim}", header.get("dim")
        )
    if len(raw) % (4 * dim):
        raise CorruptSnapshotError(f"{path.name}: {len(raw)} bytes of vectors is not [n, {dim}]")
    # read-only rows over the mapped file (no copy): stored vectors are never written to
    vectors = np.frombuffer(raw, "<f4").reshape(-1, dim)
    mapped = MappedFile(data, file, path.name) if isinstance(data, mmap.mmap) else None
    if not vectors.flags.aligned:  # written before the header was padded: copy them once
        log.info("%s: rows not aligned (an older snapshot); copied once", path.name)
        vectors = np.require(vectors, requirements=["C", "A"])
        mapped = None  # nothing is read from the mapping any more
    if not len(vectors) == len(ids) == len(metadata):
        raise CorruptSnapshotError(
            f"{path.name}: {len(vectors)} vectors for {len(ids)} ids, {len(metadata)} metadata"
        )
    return Snapshot(seq, ids, metadata, vectors, file, mapped, digest, header["sources"])


def snapshot_digest(path: Path) -> bytes:
    """The sha256 a snapshot file ends with (what identifies that very state), unchecked:
    for a file this process has just written and renamed into place."""
    with open(path, "rb") as f:
        f.seek(-32, os.SEEK_END)
        return f.read(32)
