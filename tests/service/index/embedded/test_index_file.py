"""The FAISS index saved with each snapshot: loaded on open when it belongs to that very
snapshot (then brought up to date with the log), rebuilt when missing, stale or damaged,
and a damaged file is moved aside, never loaded. Searches answer the same either way."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from contrastkit.service.index.embedded.collection import Collection
from contrastkit.service.index.embedded.index_file import INDEX
from contrastkit.service.index.types import IndexSpec
from tests.helpers import unit_rows

DIM = 16
SPECS = {
    "hnsw": IndexSpec(kind="hnsw", m=8, ef_search=128),
    "ivf": IndexSpec(kind="ivf", nlist=4, nprobe=4),
}
LOADED = "loaded its saved"


def make(folder: Path, kind: str) -> tuple[Collection, dict[str, np.ndarray]]:
    """300 items snapshotted, then in the log: 40 new, 20 replaced, 30 deleted."""
    Collection.create(folder, "c", "m", DIM, SPECS[kind])
    col = Collection(folder)
    truth: dict[str, np.ndarray] = {}

    def put(ids: list[str], seed: int) -> None:
        vecs = unit_rows(len(ids), DIM, seed)
        col.upsert(ids, vecs, [{"i": i} for i in range(len(ids))])
        truth.update(zip(ids, vecs, strict=True))

    put([f"a{i}" for i in range(300)], 1)
    col.snapshot()
    assert (folder / INDEX).exists()
    put([f"n{i}" for i in range(40)], 2)
    put([f"a{i}" for i in range(20)], 3)  # replaced: new vectors under old ids
    gone = [f"a{i}" for i in range(100, 130)]
    col.delete(gone)
    for g in gone:
        del truth[g]
    return col, truth


def assert_serves(col: Collection, truth: dict[str, np.ndarray]) -> None:
    """Every item is found by its own vector, with its own score; nothing else is there."""
    assert col.count == len(truth)
    ids = sorted(truth)
    hits = col.search(np.stack([truth[i] for i in ids]), 1)
    assert [h[0].id for h in hits] == ids
    np.testing.assert_allclose([h[0].score for h in hits], 1.0, atol=1e-5)
    assert col.get("a110") is None


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_the_saved_index_is_loaded_and_caught_up_with_the_log(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    col, truth = make(tmp_path / "c", kind)
    assert_serves(col, truth)
    col.close()
    with caplog.at_level(logging.INFO):
        again = Collection(tmp_path / "c")
    assert LOADED in caplog.text and again.info().active_index == kind
    assert_serves(again, truth)
    # and it keeps working: writes after the load land in the loaded index
    again.upsert(["late"], unit_rows(1, DIM, 9), [{}])
    assert again.search(unit_rows(1, DIM, 9), 1)[0][0].id == "late"
    again.close()


def test_a_stale_index_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "c"
    col, truth = make(folder, "hnsw")
    shutil.copy(folder / INDEX, tmp_path / "old.faiss")  # saved with the first snapshot
    col.snapshot()
    col.close()
    shutil.copy(tmp_path / "old.faiss", folder / INDEX)
    with caplog.at_level(logging.INFO):
        again = Collection(folder)
    assert LOADED not in caplog.text and "another snapshot" in caplog.text
    assert_serves(again, truth)
    again.close()


@pytest.mark.parametrize("where", ["header", "labels", "graph", "truncated"])
def test_a_damaged_index_is_set_aside_and_rebuilt(
    where: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "c"
    col, truth = make(folder, "hnsw")
    col.close()
    data = bytearray((folder / INDEX).read_bytes())
    at = {"header": 20, "labels": data.index(b"}") + 40, "graph": len(data) - 100}.get(where)
    if at is None:
        damaged = bytes(data[: len(data) // 2])
    else:
        data[at] ^= 0x10
        damaged = bytes(data)
    (folder / INDEX).write_bytes(damaged)
    with caplog.at_level(logging.INFO):
        again = Collection(folder)
    assert LOADED not in caplog.text
    assert_serves(again, truth)
    aside = list(folder.glob("index.damaged*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept as it was
    again.close()


def test_flat_collections_save_no_index(tmp_path: Path) -> None:
    Collection.create(tmp_path / "c", "c", "m", DIM, IndexSpec(kind="flat"))
    col = Collection(tmp_path / "c")
    col.upsert(["x"], unit_rows(1, DIM, 0), [{}])
    col.snapshot()
    assert not (tmp_path / "c" / INDEX).exists()  # rebuilt as fast as it would be read
    col.close()
