"""When a snapshot falls due: by the log's bytes against the state's, then by records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contrastkit.service.index.embedded import collection as collection_mod
from contrastkit.service.index.embedded.collection import Collection
from contrastkit.service.index.embedded.recovery import PREV_LOG
from contrastkit.service.index.types import IndexSpec
from tests.helpers import unit_rows

DIM = 16
ROW = DIM * 4  # bytes of one vector


def _collection(folder: Path, n: int, snapshot_every: int) -> Collection:
    """A collection of n items with a snapshot of them, and an empty log."""
    Collection.create(folder, "c", "m", DIM, IndexSpec(kind="flat"))
    col = Collection(folder, snapshot_every=10**9)
    col.upsert([f"s{i}" for i in range(n)], unit_rows(n, DIM, 0), [{} for _ in range(n)])
    col.snapshot()
    col.close()
    return Collection(folder, snapshot_every=snapshot_every)


def _snapshots(folder: Path) -> float:
    """The log.prev.wal's modification time: it changes with every snapshot."""
    path = folder / PREV_LOG
    return path.stat().st_mtime_ns if path.exists() else 0


def test_tiny_writes_into_a_large_state_wait_for_an_eighth_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(collection_mod, "SMALL_STATE", 1000 * ROW // 2)  # 1,000 items: large
    col = _collection(tmp_path / "c", 1000, snapshot_every=5)
    state = col._snap_bytes
    assert state == 1000 * ROW
    before, one = _snapshots(tmp_path / "c"), unit_rows(1, DIM, 1)
    sizes = []  # the log's bytes after each write, until the write that snapshots
    while col.log_records or not sizes:
        assert len(sizes) < 1000, "no snapshot fell due"
        col.upsert([f"n{len(sizes)}"], one, [{}])
        sizes.append(col._wal.size)
    # 5 records would have been enough before: now the log waited for state / 8 bytes
    assert len(sizes) > 5 and sizes[-1] == 0 and _snapshots(tmp_path / "c") != before
    assert sizes[-2] * 8 < state  # the last write before the due one was short of it
    record = sizes[0]
    assert (sizes[-2] + record) * 8 >= state  # and the due one passed it
    col.close()


def test_a_log_as_large_as_the_state_is_folded_in_whatever_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(collection_mod, "SMALL_STATE", 100 * ROW)
    col = _collection(tmp_path / "c", 200, snapshot_every=10**9)
    col.upsert([f"a{i}" for i in range(100)], unit_rows(100, DIM, 2), [{} for _ in range(100)])
    assert col.log_records == 1  # half the state's bytes: not yet
    col.upsert([f"b{i}" for i in range(100)], unit_rows(100, DIM, 3), [{} for _ in range(100)])
    assert col.log_records == 0 and col._snap_bytes > 300 * ROW  # folded in: 400 rows
    col.close()
    assert Collection(tmp_path / "c").count == 400


def test_small_states_keep_the_record_rule(tmp_path: Path) -> None:
    col = _collection(tmp_path / "c", 10, snapshot_every=3)
    for i in range(3):
        col.upsert([f"n{i}"], unit_rows(1, DIM, 4), [{}])
    assert col.log_records == 0  # the third record made it due
    col.close()


def test_a_snapshot_written_in_parts_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows stacked a few at a time into one reused buffer make the same file, whatever
    the chunk size, and its checksum holds."""
    from contrastkit.service.index.embedded import snapshot as snapmod

    vecs = unit_rows(37, DIM, 5)
    snap = snapmod.Snapshot(9, [str(i) for i in range(37)], [{"i": i} for i in range(37)], vecs)
    whole = snapmod.encode_snapshot(snap)
    monkeypatch.setattr(snapmod, "CHUNK", 3 * ROW)  # 3 rows a part: 13 parts, the last short
    rows = list(vecs)  # as a collection passes them: one array per row
    parts = [bytes(p) for p in snapmod.snapshot_parts(9, DIM, snap.ids, snap.metadata, rows)]
    assert len(parts) == 1 + 13 + 1 and b"".join(parts) == whole
    (tmp_path / "s.bin").write_bytes(whole)
    back = snapmod.read_snapshot(tmp_path / "s.bin", DIM)
    np.testing.assert_array_equal(back.vectors, vecs)
    assert back.metadata[36] == {"i": 36} and back.seq == 9
