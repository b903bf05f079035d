"""The append-only write-ahead log of a collection.

Each record: [u32 payload length][u32 crc32 of payload][payload]. A payload is
[u8 op][u64 seq][u32 header length][header JSON][float32 vectors]. A write is
acknowledged only after write + flush + fsync; one record holds a whole request
(the fsync is per request, not per vector). A torn record at the tail (a crash mid-write)
fails its length or CRC check and is cut off on open; nothing after it was acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.index.fsutil import storage_error

UPSERT, DELETE = 1, 2
_REC = struct.Struct("<II")
_PAY = struct.Struct("<BQI")
MAX_RECORD = 1 << 31


@dataclass
class Record:
    op: int
    seq: int
    ids: list[str]
    metadata: list[dict[str, Any]] = field(default_factory=list)
    vectors: np.ndarray | None = None  # float32 [n, d] for UPSERT

    def encode(self) -> bytes:
        header = json.dumps({"ids": self.ids, "metadata": self.metadata}).encode()
        body = b"" if self.vectors is None else np.ascontiguousarray(self.vectors, "<f4").tobytes()
        payload = _PAY.pack(self.op, self.seq, len(header)) + header + body
        return _REC.pack(len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def decode(cls, payload: bytes, dim: int) -> Record:
        op, seq, hlen = _PAY.unpack_from(payload)
        header = json.loads(payload[_PAY.size : _PAY.size + hlen])
        raw = payload[_PAY.size + hlen :]
        vectors = np.frombuffer(raw, "<f4").reshape(-1, dim).copy() if op == UPSERT else None
        return cls(op, seq, header["ids"], header["metadata"], vectors)


class WriteAheadLog:
    """Appends records durably; `replay()` reads the valid prefix back."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim
        self.records = 0
        self.torn_bytes = 0  # bytes of a torn tail cut off on open
        self._file = open(path, "ab")  # noqa: SIM115 - kept open for appends

    def append(self, record: Record) -> None:
        """Durable on return; on failure the file is cut back to its previous length."""
        data = record.encode()
        if self._file.closed:  # a rollback could not reopen it
            try:
                self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for appends
            except OSError as e:
                raise storage_error(e) from e
        start = self._file.tell()
        try:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            self._rollback(start)
            raise storage_error(e) from e
        self.records += 1

    def _rollback(self, size: int) -> None:
        # A failed write/flush leaves the record in the buffered writer, which a later
        # flush would write ahead of the next record (same seq: replay would keep the
        # failed one and skip the acknowledged one). Drop that writer, reopen the file.
        with contextlib.suppress(OSError):  # its flush fails again; it closes all the same
            self._file.close()
        try:
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for appends
            self._file.truncate(size)
            self._file.seek(size)
            os.fsync(self._file.fileno())
        except OSError:
            pass  # a torn tail is detected and cut on the next open anyway

    def replay(self) -> Iterator[Record]:
        """Valid records in order; a torn or corrupt tail is cut off the file."""
        good = 0
        with open(self.path, "rb") as f:
            data = f.read()
        while good + _REC.size <= len(data):
            length, crc = _REC.unpack_from(data, good)
            payload = data[good + _REC.size : good + _REC.size + length]
            # length < header: e.g. a zero-filled tail after a crash (crc32(b"") == 0)
            bad_length = length < _PAY.size or length > MAX_RECORD
            if bad_length or len(payload) < length or zlib.crc32(payload) != crc:
                break
            yield Record.decode(payload, self.dim)
            good += _REC.size + length
            self.records += 1
        if good < len(data):
            self.torn_bytes = len(data) - good
            self._rollback(good)

    def close(self) -> None:
        self._file.close()
