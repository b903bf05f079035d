"""Snapshot files: a collection's whole state, checksummed, written atomically.

Layout: b"CSNAP1" | u32 header length | header JSON (seq, dim, ids, metadata) |
float32 vectors [n, dim] | sha256 of everything before it (32 bytes).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.index.fsutil import atomic_write

MAGIC = b"CSNAP1"
_LEN = struct.Struct("<I")


class CorruptSnapshotError(ValueError):
    """The snapshot's checksum or structure is wrong: it must not be served."""


@dataclass
class Snapshot:
    seq: int  # the last log sequence number the snapshot includes
    ids: list[str]
    metadata: list[dict[str, Any]]
    vectors: np.ndarray  # float32 [n, dim]


def write_snapshot(path: Path, snap: Snapshot) -> None:
    header = json.dumps(
        {
            "seq": snap.seq,
            "dim": int(snap.vectors.shape[1]),
            "ids": snap.ids,
            "metadata": snap.metadata,
        }
    ).encode()
    body = (
        MAGIC
        + _LEN.pack(len(header))
        + header
        + np.ascontiguousarray(snap.vectors, "<f4").tobytes()
    )
    atomic_write(path, body + hashlib.sha256(body).digest())


def read_snapshot(path: Path, dim: int) -> Snapshot:
    data = path.read_bytes()
    body, digest = data[:-32], data[-32:]
    if len(data) < len(MAGIC) + _LEN.size + 32 or hashlib.sha256(body).digest() != digest:
        raise CorruptSnapshotError(f"{path.name}: checksum mismatch (truncated or corrupt)")
    if not body.startswith(MAGIC):
        raise CorruptSnapshotError(f"{path.name}: not a snapshot file")
    (hlen,) = _LEN.unpack_from(body, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    header = json.loads(body[start : start + hlen])
    if header["dim"] != dim:
        raise CorruptSnapshotError(f"{path.name}: dimension {header['dim']} != {dim}")
    vectors = np.frombuffer(body[start + hlen :], "<f4").reshape(-1, dim).copy()
    if len(vectors) != len(header["ids"]):
        raise CorruptSnapshotError(
            f"{path.name}: {len(vectors)} vectors for {len(header['ids'])} ids"
        )
    return Snapshot(header["seq"], header["ids"], header["metadata"], vectors)
