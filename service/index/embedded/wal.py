"""The append-only write-ahead log of a collection.

Each record: [u32 payload length][u32 crc32 of payload][payload]. A payload is
[u8 op][u64 seq][u32 header length][header JSON][float32 vectors]; the header JSON always
begins with `{"ids": ` (SIGNATURE), which lets a scan find the records after a damaged one.
The header of an upsert whose items carry sources (contrastkit.service.index.items) also holds
"sources", one per id (null: none); a header without it (every log written before there
were sources, and every upsert without any) has none, so old logs replay as they did.
Records carry consecutive sequence numbers. A write is acknowledged only after write +
flush + fsync; one record holds a whole request (the fsync is per request, not per vector).

Reading a log back (`scan_log`) sorts its bytes into valid records and damaged ranges:

- a damaged range with no valid record after it is a *torn tail*: a crash mid-append.
  Nothing in it was acknowledged; recovery cuts it off, after copying its bytes aside to
  `log.wal.torn-<utc>` (`cut_torn_tail`), so nothing is destroyed.
- a damaged range followed by a valid record, or valid records whose sequence numbers do
  not run on by exactly 1, is *corruption* (bit rot, a bad disk, an edited file): records
  that were acknowledged are unreadable. Nothing is cut; the collection is refused until
  `contrastive index repair` salvages what is readable.

Limitation: a byte flipped inside the very last record is indistinguishable from a torn
write (both fail the CRC and nothing follows), so that one record is cut as a torn tail;
its bytes are kept in the `.torn-` file.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from contrastkit.service.index.fsutil import atomic_write, storage_error, unused_path
from contrastkit.service.index.types import CollectionError

UPSERT, DELETE = 1, 2
_REC = struct.Struct("<II")
_PAY = struct.Struct("<BQI")
MAX_RECORD = 1 << 31
SIGNATURE = b'{"ids": '  # how json.dumps starts every record's header (see Record.encode)
_SIG_AT = _REC.size + _PAY.size  # where SIGNATURE sits in a record


@dataclass
class Record:
    op: int
    seq: int
    ids: list[str]
    metadata: list[dict[str, Any]] = field(default_factory=list)
    vectors: np.ndarray | None = None  # float32 [n, d] for UPSERT
    sources: list[str | None] | None = None  # one per id for an UPSERT that has any

    def encode(self) -> bytes:
        head: dict[str, Any] = {"ids": self.ids, "metadata": self.metadata}  # ids first
        if self.sources is not None and any(s is not None for s in self.sources):
            head["sources"] = self.sources  # only then: a record without is as it always was
        header = json.dumps(head).encode()
        body = b"" if self.vectors is None else np.ascontiguousarray(self.vectors, "<f4").tobytes()
        payload = _PAY.pack(self.op, self.seq, len(header)) + header + body
        return _REC.pack(len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def decode(cls, payload: bytes, dim: int) -> Record:
        """A record's payload -> the Record, its vectors float32 [len(ids), dim] (UPSERT).

        Raises RecordShapeError when an upsert's vector bytes are not len(ids) * dim * 4:
        a record carries no dimension of its own, so this length is what tells a wrong
        `dim` (an edited collection.json) from the one the record was written with,
        instead of reading every vector at the wrong width."""
        op, seq, header, raw = _split(payload)
        ids = header["ids"]
        vectors = None
        if op == UPSERT:
            if len(raw) != 4 * dim * len(ids):
                raise RecordShapeError(seq, len(ids), len(raw), dim)
            vectors = np.frombuffer(raw, "<f4").reshape(-1, dim).copy()
        return cls(op, seq, ids, header["metadata"], vectors, header.get("sources"))


class RecordShapeError(ValueError):
    """A valid record (its CRC holds) whose vectors are not of the dimension asked for."""

    def __init__(self, seq: int, count: int, size: int, dim: int) -> None:
        per = f"{size // (4 * count)} floats each" if count and size % (4 * count) == 0 else ""
        super().__init__(
            f"record {seq} holds {size} bytes of vectors for {count} ids"
            + (f" ({per})" if per else "")
            + f", not {count} x {dim} floats"
        )
        self.seq = seq


def _split(payload: bytes) -> tuple[int, int, dict[str, Any], bytes]:
    """A record's payload -> (op, seq, header {"ids", "metadata"}, vector bytes)."""
    op, seq, hlen = _PAY.unpack_from(payload)
    header = json.loads(payload[_PAY.size : _PAY.size + hlen])
    return op, seq, header, payload[_PAY.size + hlen :]


def vector_width(payload: bytes) -> int | None:
    """The floats per vector of an upsert record's payload (its vector bytes over its ids),
    or None (a delete, no ids, or bytes that do not divide): the dimension it was written
    with, for `contrastive index repair` to report when collection.json is lost."""
    op, _, header, raw = _split(payload)
    count = len(header["ids"])
    if op != UPSERT or not count or len(raw) % (4 * count):
        return None
    return len(raw) // (4 * count)


# -- reading a log back -------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """A valid record in a log file: bytes [offset, offset + size), sequence number seq."""

    offset: int
    size: int
    seq: int


@dataclass(frozen=True)
class Damage:
    """Bytes [start, end) of a log file that hold no valid record."""

    start: int
    end: int

    def __str__(self) -> str:
        return f"bytes {self.start}-{self.end}"


@dataclass
class LogScan:
    """A log file read back: its valid records, in file order, and the damaged ranges."""

    path: Path
    data: bytes
    entries: list[Entry]
    damage: list[Damage]

    @property
    def exists(self) -> bool:
        return self.path.exists()

    @property
    def valid_end(self) -> int:
        """The end of the last valid record (0: none): what the file holds without a torn tail."""
        return self.entries[-1].offset + self.entries[-1].size if self.entries else 0

    @property
    def torn_tail(self) -> Damage | None:
        """The damaged range at the end of the file that no valid record follows, if any."""
        if self.damage and self.damage[-1].end == len(self.data):
            return self.damage[-1]
        return None

    def corruption(self) -> str | None:
        """Why this log is corrupt rather than (at most) torn; None when it is not."""
        name = self.path.name
        for d in self.damage:
            if d.end < len(self.data):
                nxt = next(e for e in self.entries if e.offset == d.end)
                return (
                    f"{name}: {d} fail their length/CRC check but valid records follow "
                    f"(from record {nxt.seq}): damage, not a torn write"
                )
        for a, b in zip(self.entries, self.entries[1:], strict=False):
            if b.seq != a.seq + 1:
                return f"{name}: record {a.seq} is followed by record {b.seq}"
        return None

    def describe_damage(self) -> str:
        return ", ".join(str(d) for d in self.damage)

    def record(self, entry: Entry, dim: int) -> Record:
        """Decode one entry: a Record with vectors float32 [n, dim] (UPSERT);
        RecordShapeError when its vectors are not `dim`-d."""
        return Record.decode(self.payload(entry), dim)

    def payload(self, entry: Entry) -> bytes:
        """One entry's payload bytes (after its length and CRC)."""
        return self.data[entry.offset + _REC.size : entry.offset + entry.size]


def scan_log(path: Path) -> LogScan:
    """Read `path` (missing: empty) into valid records and damaged ranges; changes nothing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    entries: list[Entry] = []
    damage: list[Damage] = []
    pos = 0
    while pos < len(data):
        entry = _entry_at(data, pos)
        if entry is not None:
            entries.append(entry)
            pos += entry.size
            continue
        nxt = _next_entry(data, pos + 1)
        damage.append(Damage(pos, nxt))
        pos = nxt
    return LogScan(path, data, entries, damage)


def _entry_at(data: bytes, pos: int) -> Entry | None:
    """The valid record that starts at byte `pos`, or None (bad length, CRC or header)."""
    if pos < 0 or pos + _SIG_AT > len(data):
        return None
    length, crc = _REC.unpack_from(data, pos)
    # length < header: e.g. a zero-filled tail after a crash (crc32(b"") == 0)
    if length < _PAY.size or length > MAX_RECORD or pos + _REC.size + length > len(data):
        return None
    start = pos + _REC.size
    if zlib.crc32(memoryview(data)[start : start + length]) != crc:
        return None
    op, seq, hlen = _PAY.unpack_from(data, start)
    if op not in (UPSERT, DELETE) or hlen > length - _PAY.size:
        return None
    return Entry(pos, _REC.size + length, seq)


def _next_entry(data: bytes, start: int) -> int:
    """The offset of the first valid record at or after `start`; len(data) if none.

    Only offsets whose header JSON starts with SIGNATURE are checked, so a scan over a
    damaged range costs one bytes.find, plus a CRC per (rare) false candidate."""
    at = data.find(SIGNATURE, start + _SIG_AT)
    while at != -1:
        if _entry_at(data, at - _SIG_AT) is not None:
            return at - _SIG_AT
        at = data.find(SIGNATURE, at + 1)
    return len(data)


def cut_torn_tail(path: Path, valid_end: int) -> Path:
    """Copy the bytes of `path` after `valid_end` to `<name>.torn-<utc>` (fsynced), then cut
    them off `path` -> the copy's path. Raises CollectionError (insufficient_storage on a
    full disk: then `path` is unchanged)."""
    try:
        with open(path, "rb") as f:
            f.seek(valid_end)
            tail = f.read()
        aside = unused_path(path.parent, f"{path.name}.torn")
        atomic_write(aside, tail)
        with open(path, "r+b") as f:
            f.truncate(valid_end)
            os.fsync(f.fileno())
    except OSError as e:
        raise storage_error(e) from e
    return aside


# -- appending -----------------------------------------------------------------------------
class WriteAheadLog:
    """Appends records durably to `path`, whose first `size` bytes are valid records.

    The file is opened on the first append. Bytes past `size` (left by an append that
    failed and whose rollback failed too) are cut before anything is appended, so an
    acknowledged record never follows garbage."""

    def __init__(self, path: Path, dim: int, size: int) -> None:
        self.path = path
        self.dim = dim
        self.size = size
        self.records = 0  # records in the log since the last snapshot (set by the owner)
        self._file: BinaryIO | None = None

    def append(self, record: Record) -> None:
        """Durable on return; on failure the file is cut back to its previous length."""
        data = record.encode()
        f = self._open()
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            self._rollback()
            raise storage_error(e) from e
        self.size += len(data)
        self.records += 1

    def settle(self) -> None:
        """Make sure the file holds exactly the valid records (before it is rotated)."""
        self._open()

    def _open(self) -> BinaryIO:
        if self._file is None or self._file.closed:
            try:
                self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for appends
            except OSError as e:
                raise storage_error(e) from e
        f = self._file
        end = f.tell()  # append mode: the end of the file
        if end < self.size:
            self.close()
            raise CollectionError(
                "storage_error", f"{self.path.name} is shorter than the records written to it"
            )
        if end > self.size:
            try:
                f.truncate(self.size)
                os.fsync(f.fileno())
            except OSError as e:
                self.close()
                raise storage_error(e) from e
        return f

    def _rollback(self) -> None:
        # A failed write/flush leaves the record in the buffered writer, which a later
        # flush would write ahead of the next record (same seq: replay would keep the
        # failed one and skip the acknowledged one). Drop that writer; reopening cuts the
        # file back to `size` (or, if that fails too, the next append or open does).
        self.close()
        with contextlib.suppress(CollectionError):
            self._open()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a failed flush; it closes all the same
                self._file.close()
