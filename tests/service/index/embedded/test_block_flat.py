"""The block flat index (CPU exact search) against FAISS's IndexFlatIP, the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contrastkit.service.index.embedded import block_flat, snapshot
from contrastkit.service.index.embedded.block_flat import BlockFlatIndex
from contrastkit.service.index.embedded.collection import Collection
from contrastkit.service.index.embedded.faiss_index import VectorIndex
from contrastkit.service.index.types import IndexSpec
from tests.helpers import unit_rows

SPEC = IndexSpec(kind="flat")


def _same(ref: VectorIndex, got: BlockFlatIndex, queries: np.ndarray, k: int, allowed=None):
    (rs, rl), (gs, gl) = ref.search(queries, k, allowed), got.search(queries, k, allowed)
    # FAISS clamps k to what it holds and pads a short list with -1 (score -3.4e38);
    # ours pads with -1 (score -inf) up to k: compare the hits, then the padding
    width = rl.shape[1]
    np.testing.assert_array_equal(gl[:, :width], rl)
    hit = rl >= 0
    np.testing.assert_allclose(gs[:, :width][hit], rs[hit], atol=1e-5)
    assert (gl[:, width:] == -1).all() and np.isneginf(gs[gl == -1]).all()


@pytest.fixture()
def small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks and search steps of a few rows, so a small test crosses many of each."""
    monkeypatch.setattr(block_flat, "BLOCK", 64)
    monkeypatch.setattr(block_flat, "STEP", 50)


@pytest.mark.usefixtures("small_steps")
def test_random_adds_and_removes_match_faiss() -> None:
    rng = np.random.default_rng(0)
    vecs, queries = unit_rows(3000, 16, 1), unit_rows(20, 16, 2)
    labels = np.arange(500, dtype=np.int64) * 2
    ref = VectorIndex.build(16, SPEC, labels, vecs[:500])
    got = BlockFlatIndex.build(16, SPEC, labels, vecs[:500])
    next_label, row = 1000, 500
    for _ in range(40):
        m = int(rng.integers(1, 90))
        new = np.arange(next_label, next_label + m, dtype=np.int64)
        ref.add(new, vecs[row : row + m])
        got.add(new, vecs[row : row + m])
        next_label, row = next_label + m + int(rng.integers(0, 3)), row + m
        gone = rng.integers(0, next_label, int(rng.integers(0, 60)))
        ref.remove(gone.astype(np.int64))
        got.remove(gone.astype(np.int64))
        assert got.live == ref.live
        _same(ref, got, queries, 7)
    present = ref.search(queries[:1], ref.live)[1][0]
    allowed = rng.choice(present, 40, replace=False)
    _same(ref, got, queries, 10, allowed)
    _same(ref, got, queries, 50, allowed)  # more asked for than allowed: -1 padding


@pytest.mark.usefixtures("small_steps")
def test_half_dead_blocks_are_compacted() -> None:
    vecs = unit_rows(64 * 4, 8, 3)
    idx = BlockFlatIndex.build(8, SPEC, np.arange(64, dtype=np.int64), vecs[:64])
    idx.add(np.arange(64, 256, dtype=np.int64), vecs[64:])
    assert len(idx._blocks) == 4
    idx.remove(np.arange(64, 64 + 31, dtype=np.int64))  # 31 of 64: kept as it is
    assert idx._blocks[1].fill == 64
    idx.remove(np.array([95], np.int64))  # 32 of 64: compacted to its 32 live rows
    assert idx._blocks[1].fill == 32 and idx._blocks[1].dead == 0
    idx.remove(np.arange(0, 64, dtype=np.int64))  # a wholly dead block goes
    assert len(idx._blocks) == 3 and idx.live == 256 - 96
    _, labels = idx.search(vecs[96:97], 1)
    assert labels[0, 0] == 96


def test_build_adopts_rows_and_add_leaves_them() -> None:
    vecs = unit_rows(100, 8, 4)
    vecs.flags.writeable = False  # as a snapshot's rows are
    idx = BlockFlatIndex.build(8, SPEC, np.arange(100, dtype=np.int64), vecs)
    assert idx._blocks[0].rows is vecs  # no copy
    idx.add(np.array([100, 101], np.int64), unit_rows(2, 8, 5))  # into a new block
    assert idx._blocks[0].rows is vecs and idx.live == 102


def test_unsorted_build_is_sorted_and_bad_adds_refused() -> None:
    vecs = unit_rows(5, 4, 6)
    idx = BlockFlatIndex.build(4, SPEC, np.array([9, 3, 5, 1, 7], np.int64), vecs)
    _, labels = idx.search(vecs[1:2], 1)
    assert labels[0, 0] == 3
    with pytest.raises(ValueError, match="ascend"):
        idx.add(np.array([8], np.int64), vecs[:1])  # below the largest label present
    with pytest.raises(ValueError, match="ascend"):
        idx.add(np.array([12, 11], np.int64), vecs[:2])


def test_empty_and_fewer_than_k() -> None:
    idx = BlockFlatIndex(4, SPEC)
    scores, labels = idx.search(unit_rows(2, 4, 7), 3)
    assert (labels == -1).all() and np.isneginf(scores).all()
    idx.add(np.array([5], np.int64), unit_rows(1, 4, 8))
    assert idx.search(unit_rows(1, 4, 9), 3)[1].tolist() == [[5, -1, -1]]


def _snapshotted(folder: Path, vecs: np.ndarray) -> Collection:
    """A new flat collection of `vecs` (ids "0", "1", ...) and a snapshot of them."""
    Collection.create(folder, "c", "m", vecs.shape[1], SPEC)
    col = Collection(folder)
    col.upsert([str(i) for i in range(len(vecs))], vecs, [{} for _ in range(len(vecs))])
    col.snapshot()
    return col


def test_collection_opens_over_the_snapshot_rows_without_a_copy(tmp_path: Path) -> None:
    folder, vecs = tmp_path / "c", unit_rows(50, 8, 10)
    col = _snapshotted(folder, vecs)
    col.upsert(["late"], vecs[:1], [{}])  # one record in the log, after the snapshot
    col.close()
    col = Collection(folder)
    first = col._index._blocks[0].rows
    assert np.shares_memory(first, col._vec["0"]) and not first.flags.writeable
    hits = col.search(vecs[:1], 2)[0]
    assert {h.id for h in hits} == {"0", "late"}
    col.close()


def test_mapped_rows_outlive_their_snapshot_file(tmp_path: Path) -> None:
    """The opened snapshot's rows are a read-only mapping of snapshot.bin; two more
    snapshots rename it and then replace it, and the rows (and searches) stay right."""
    folder, vecs = tmp_path / "c", unit_rows(40, 8, 11)
    _snapshotted(folder, vecs).close()
    col = Collection(folder)
    inode = (folder / "snapshot.bin").stat().st_ino
    for round_ in range(2):
        col.upsert([f"r{round_}"], vecs[:1], [{}])
        col.snapshot()
    assert not any(p.stat().st_ino == inode for p in folder.glob("snapshot*.bin"))
    np.testing.assert_array_equal(col.get("7")[0], vecs[7])
    assert col.search(vecs[7:8], 1)[0][0].id == "7"
    col.close()


def _aligned_blocks(col: Collection) -> list[bool]:
    """For every block a search of `col` scores: are its rows float-aligned (BLAS takes
    them, not numpy's unaligned loops)?"""
    return [b.rows.flags.aligned and b.rows.ctypes.data % 4 == 0 for b in col._index._blocks]


@pytest.mark.parametrize("n_ids", [1, 2, 3, 7, 50])
def test_reopened_rows_start_on_a_cache_line(tmp_path: Path, n_ids: int) -> None:
    """The snapshot pads its header so that the mapped rows start on a 64-byte boundary,
    whatever the header's length (ids of every length shift it); every block a search
    touches is aligned, and the snapshot's own block is still the map, not a copy."""
    folder, vecs = tmp_path / "c", unit_rows(n_ids, 8, 12)
    col = _snapshotted(folder, vecs)
    col.upsert(["x" * n_ids], vecs[:1], [{"pad": "y" * n_ids}])  # and one block after it
    col.close()
    col = Collection(folder)
    first = col._index._blocks[0].rows
    assert first.ctypes.data % snapshot.ROW_ALIGN == 0 and not first.flags.writeable
    assert np.shares_memory(first, col._vec["0"])  # adopted, not copied
    assert _aligned_blocks(col) == [True] * len(col._index._blocks)
    col.close()


def test_an_unaligned_snapshot_of_an_older_version_is_read_and_copied_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, vecs = tmp_path / "c", unit_rows(20, 8, 13)
    monkeypatch.setattr(snapshot, "ROW_ALIGN", 1)  # as before the padding: no padding
    _snapshotted(folder, vecs).close()
    monkeypatch.undo()
    data = (folder / "snapshot.bin").read_bytes()
    (hlen,) = snapshot._LEN.unpack_from(data, len(snapshot.MAGIC))
    assert (len(snapshot.MAGIC) + snapshot._LEN.size + hlen) % 4 != 0  # really unaligned
    col = Collection(folder)
    assert _aligned_blocks(col) == [True]
    np.testing.assert_array_equal(col.get("3")[0], vecs[3])
    assert {h.id for h in col.search(vecs[3:4], 1)[0]} == {"3"}
    col.close()
