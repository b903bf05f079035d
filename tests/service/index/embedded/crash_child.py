"""The child process of test_crash: writes batches until it is killed.

Usage: python crash_child.py ROOT FIRST_BATCH. Opens the store in ROOT (the collection
"c" must exist), then for batch b = FIRST_BATCH, FIRST_BATCH+1, ...: prints "SEND b",
upserts the batch (one request), prints "ACK b" once the upsert has returned, and takes an
explicit snapshot every 5th batch (the store also snapshots every 3 log records).

Batch b holds ids b{b}-0 .. b{b}-{n-1} with metadata {"batch": b, "i": i}, plus two
repeats: its own first id again at the end (last wins, same content) and b{b-1}-0 from the
batch before (a replacement with the same content).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

DIM = 16
NAME = "c"
SNAPSHOT_EVERY = 3


def vector(id_: str) -> np.ndarray:
    """The unit float32 vector of an id (seeded by it, so the parent can recompute it)."""
    seed = int.from_bytes(hashlib.sha256(id_.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def batch_size(b: int) -> int:
    return 1 + (b * 7) % 40


def batch_ids(b: int) -> list[str]:
    return [f"b{b}-{i}" for i in range(batch_size(b))]


def metadata_of(id_: str) -> dict[str, Any]:
    b, i = id_[1:].split("-")
    return {"batch": int(b), "i": int(i)}


def request(b: int, first: int) -> list[str]:
    ids = batch_ids(b)
    extra = [ids[0]] + ([f"b{b - 1}-0"] if b > first else [])
    return ids + extra


def main() -> None:
    from contrastkit.service.index.embedded.store import CollectionStore

    root, first = Path(sys.argv[1]), int(sys.argv[2])
    store = CollectionStore(root, snapshot_every=SNAPSHOT_EVERY)
    col = store.get(NAME)
    print("READY", flush=True)
    b = first
    while True:
        ids = request(b, first)
        vecs = np.stack([vector(i) for i in ids])
        print(f"SEND {b}", flush=True)
        col.upsert(ids, vecs, [metadata_of(i) for i in ids])
        print(f"ACK {b}", flush=True)
        if b % 5 == 0:
            col.snapshot()
        b += 1


if __name__ == "__main__":
    main()
