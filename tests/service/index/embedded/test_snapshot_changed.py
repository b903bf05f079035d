"""A snapshot file truncated, removed or replaced under a running server.

The server holds a collection's rows in its own memory (snapshot.read_snapshot copies
them at open), so damage to snapshot.bin afterwards can no longer kill the process (a
truncated memory-mapped file raised SIGBUS on the next search: exit 135, every
collection gone, nothing logged). The damage is seen on the next access of that
collection, which is then refused (503 collection_corrupt, listed in /readyz) with its
files left as they are; the other collections keep serving.

The damage is done in a child process, which searches afterwards: were the rows still
mapped, the child would die of SIGBUS, not the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contrastkit.service.index.embedded.backend import FaissBackend
from contrastkit.service.index.embedded.collection import PREV_LOG, PREV_SNAP, SNAP
from tests.helpers import unit_rows

DIM = 32
ROWS = 300  # a snapshot of ~45 KB: its rows lie past the first 4096 bytes

# The child: opens the store (both collections from their snapshots), searches both,
# damages "a"'s snapshot.bin as argv[2] says, then searches and reads both again and
# prints what each call answered, one JSON line.
CHILD = """
import json, os, sys
from pathlib import Path
import numpy as np
from contrastkit.service.index.embedded.backend import FaissBackend
from contrastkit.service.index.types import CollectionError

root, how, dim = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
backend = FaissBackend.open(root, snapshot_every=1, device="cpu")
q = np.zeros((1, dim), np.float32)
q[0, 0] = 1.0
for name in ("a", "b"):
    backend.get(name).search(q, 3)
snap = root / "a" / "snapshot.bin"
if how == "truncate_prev":  # a write rotates: the mapped file is now snapshot.prev.bin
    backend.get("a").upsert(["w"], np.eye(1, dim, dtype=np.float32), [{}])
    os.truncate(root / "a" / "snapshot.prev.bin", 4096)
elif how == "truncate":
    os.truncate(snap, 4096)
elif how == "remove":
    snap.unlink()
elif how == "replace":  # a restore tool: another file of the same size renamed over it
    tmp = snap.with_name("restored.tmp")
    tmp.write_bytes(snap.read_bytes())
    os.replace(tmp, snap)

def call(fn):
    try:
        out = fn()
    except CollectionError as e:
        return {"error": e.code, "message": e.message}
    return {"ok": out}

out = {
    "search_a": call(lambda: len(backend.get("a").search(q, 3)[0])),
    "get_a": call(lambda: backend.get("a").get("a-0") is not None),
    "upsert_a": call(lambda: backend.get("a").upsert(
        ["new"], np.eye(1, dim, dtype=np.float32), [{}])),
    "search_b": call(lambda: len(backend.get("b").search(q, 3)[0])),
    "get_b": call(lambda: backend.get("b").get("b-0") is not None),
    "problems": backend.problems,
    "listed": [c.name for c in backend.list()],
}
print(json.dumps(out), flush=True)
backend.close()
"""


def _two_snapshotted_collections(root: Path) -> int:
    """Collections "a" and "b" of ROWS rows each, wholly in snapshot.bin (log.wal empty)
    -> the size of a's snapshot.bin."""
    backend = FaissBackend.open(root, device="cpu")
    for name, seed in (("a", 1), ("b", 2)):
        backend.create(name, "m", DIM)
        col = backend.get(name)
        ids = [f"{name}-{i}" for i in range(ROWS)]
        col.upsert(ids, unit_rows(ROWS, DIM, seed), [{"i": i} for i in range(ROWS)])
    backend.close()  # snapshots each collection with logged writes
    size = (root / "a" / SNAP).stat().st_size
    assert size > 3 * 4096
    return size


def _run_child(root: Path, how: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), how, str(DIM)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    # a SIGBUS shows as -7 (or 135 through a shell): the whole process was killed
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("how", ["truncate", "truncate_prev", "remove", "replace"])
def test_a_snapshot_changed_under_the_server_refuses_only_that_collection(
    tmp_path: Path, how: str
) -> None:
    root = tmp_path / "store"
    size = _two_snapshotted_collections(root)
    before = {p.name for p in (root / "a").iterdir()}

    out = _run_child(root, how)

    for call in ("search_a", "get_a", "upsert_a"):
        assert out[call]["error"] == "collection_corrupt", (call, out)  # type: ignore[index]
    why = out["search_a"]["message"]  # type: ignore[index]
    assert "snapshot.bin" in why and "'a'" in why
    if how.startswith("truncate"):
        assert f"{size} bytes" in why and "4096 bytes" in why
    assert out["search_b"] == {"ok": 3} and out["get_b"] == {"ok": True}
    assert out["listed"] == ["b"]
    assert set(out["problems"]) == {"a"}  # type: ignore[arg-type]
    assert out["problems"]["a"] == why  # type: ignore[index]

    # nothing repaired or deleted: the files are as the damage left them
    after = {p.name for p in (root / "a").iterdir()}
    if how == "truncate_prev":  # the write before the damage rotated the files
        assert after == before | {PREV_SNAP, PREV_LOG}
        assert (root / "a" / PREV_SNAP).stat().st_size == 4096
    else:
        assert after == before - ({SNAP} if how == "remove" else set())
    if how == "truncate":
        assert (root / "a" / SNAP).stat().st_size == 4096


def test_a_snapshot_left_alone_serves_on(tmp_path: Path) -> None:
    """The check does not refuse a collection whose own rotations replace snapshot.bin."""
    root = tmp_path / "store"
    _two_snapshotted_collections(root)
    backend = FaissBackend.open(root, device="cpu", snapshot_every=1)
    try:
        col = backend.get("a")
        for i in range(3):  # each write rotates snapshot.bin (a new file, a new size)
            col.upsert([f"x{i}"], unit_rows(1, DIM, 10 + i), [{}])
        assert col.count() == ROWS + 3
        assert len(col.search(unit_rows(1, DIM, 5), 3)[0]) == 3
        assert backend.problems == {}
    finally:
        backend.close()
