"""Attacks on the saved FAISS index (index.faiss) of each kind that saves one (IVF, IVF-PQ,
HNSW, HNSW-SQ8): truncated, bytes flipped, swapped for another collection's file (of
another kind, of the same kind, of another dimension), for a bare FAISS file, or with
its checksum forged over garbage. Each time the collection opens, the file is never
loaded, searches answer from the vectors, and the process lives: no byte reaches FAISS's
reader unless its sha256 and the snapshot it names check out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from contrastkit.service.index.embedded.collection import Collection
from contrastkit.service.index.embedded.index_file import INDEX, MAGIC
from contrastkit.service.index.types import IndexSpec
from tests.helpers import unit_rows

DIM = 16
N = 1_200  # items of each collection: enough to train IVF (16 lists) and SQ8 (1,000)
SPECS = {
    "ivf": IndexSpec(kind="ivf", nlist=16, nprobe=16),
    "ivfpq": IndexSpec(kind="ivfpq", nlist=16, nprobe=16, pq_m=4),
    "hnsw": IndexSpec(kind="hnsw", m=8, ef_search=64),
    "hnsw_sq8": IndexSpec(kind="hnsw_sq8", m=8, ef_search=64),
}
ITEMS = {"ivfpq": 10_000}  # IVF-PQ trains from 39 x 256 vectors on: seconds per case
KINDS = [pytest.param(k, marks=[pytest.mark.slow] if k in ITEMS else []) for k in SPECS]
LOADED = "loaded its saved"


def build(folder: Path, kind: str, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """A closed collection of `kind` (ids i0..), snapshotted with its index; its vectors."""
    Collection.create(folder, folder.name, "m", dim, SPECS[kind])
    col = Collection(folder)
    vecs = unit_rows(ITEMS.get(kind, N), dim, seed)
    col.upsert([f"i{j}" for j in range(len(vecs))], vecs, [{}] * len(vecs))
    col.snapshot()
    col.close()
    assert (folder / INDEX).exists()
    return vecs


Built = Callable[[str], tuple[Path, np.ndarray]]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """built(name) -> (folder, vectors) of a closed collection the tests copy, built once:
    "KIND", "KIND-other" (the same with other vectors), "wide" (HNSW, twice DIM)."""
    root = tmp_path_factory.mktemp("built")
    done: dict[str, tuple[Path, np.ndarray]] = {}

    def get(name: str) -> tuple[Path, np.ndarray]:
        if name not in done:
            kind, dim = ("hnsw", DIM * 2) if name == "wide" else (name.split("-")[0], DIM)
            folder = root / name / "c"  # named as the copies are (collection.json names it)
            done[name] = (folder, build(folder, kind, len(done) + 1, dim))
        return done[name]

    return get


def _reopen_and_check(
    folder: Path, vecs: np.ndarray, caplog: pytest.LogCaptureFixture
) -> Collection:
    """Open the collection: the saved index must not be used, and each probed item is
    found by its own vector with its own score."""
    with caplog.at_level(logging.INFO):
        col = Collection(folder)
    assert LOADED not in caplog.text, caplog.text
    probe = np.arange(0, len(vecs), 97)
    hits = col.search(vecs[probe], 1)
    assert [h[0].id for h in hits] == [f"i{j}" for j in probe]
    np.testing.assert_allclose([h[0].score for h in hits], 1.0, atol=1e-3)
    return col


def _copy(built: Built, name: str, to: Path) -> np.ndarray:
    src, vecs = built(name)
    shutil.copytree(src, to)
    return vecs


def _payload_at(data: bytes) -> int:
    """Where the index file's payload starts (after the magic, length and header)."""
    (size,) = struct.unpack_from("<Q", data, len(MAGIC))
    return len(MAGIC) + 8 + size


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("damage", ["truncated", "header-byte", "labels-byte", "index-byte"])
def test_a_damaged_index_file_is_set_aside_and_rebuilt(
    kind: str,
    damage: str,
    built: Built,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = tmp_path / "c"
    vecs = _copy(built, kind, folder)
    data = bytearray((folder / INDEX).read_bytes())
    start = _payload_at(data)
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        at = {"header-byte": 20, "labels-byte": start + 8 * 7, "index-byte": len(data) - 99}
        data[at[damage]] ^= 0x04
    (folder / INDEX).write_bytes(bytes(data))
    col = _reopen_and_check(folder, vecs, caplog)
    assert [p.read_bytes() for p in folder.glob("index.damaged*")] == [bytes(data)]
    col.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("source", ["another-kind", "same-kind-other-vectors", "other-dim"])
def test_another_collections_index_file_is_never_used(
    kind: str,
    source: str,
    built: Built,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Same sequence number and item count (each was built the same way), so only what
    binds the file to its own snapshot can tell."""
    folder = tmp_path / "c"
    vecs = _copy(built, kind, folder)
    other = {
        "another-kind": "hnsw" if kind != "hnsw" else "ivf",
        "same-kind-other-vectors": f"{kind}-other",
        "other-dim": "wide",
    }[source]
    shutil.copy(built(other)[0] / INDEX, folder / INDEX)
    _reopen_and_check(folder, vecs, caplog).close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_bare_faiss_file_is_refused_unread(
    kind: str,
    built: Built,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """faiss.write_index's own format in place of ours: FAISS's reader never sees it."""
    folder = tmp_path / "c"
    vecs = _copy(built, kind, folder)
    faiss.write_index(faiss.IndexFlatIP(DIM), str(folder / INDEX))
    read: list[object] = []
    monkeypatch.setattr(faiss, "deserialize_index", lambda *a: read.append(a))
    _reopen_and_check(folder, vecs, caplog).close()
    assert read == [] and len(list(folder.glob("index.damaged*"))) == 1


def _forge(
    path: Path, payload_edit: int | None = None, drop: str | None = None, **fields: object
) -> None:
    """Rewrite the index file with header `fields` changed (`drop` removed) and/or the
    byte at `payload_edit` of its FAISS bytes flipped, and a sha256 recomputed to match:
    what only a bug, an older version or someone who knows the format could write."""
    data = path.read_bytes()
    (size,) = struct.unpack_from("<Q", data, len(MAGIC))
    head = json.loads(data[len(MAGIC) + 8 : len(MAGIC) + 8 + size])
    payload = bytearray(data[len(MAGIC) + 8 + size :])
    head.update(fields)
    head.pop(drop or "", None)
    if payload_edit is not None:
        at = head["count"] * 8 + head["tombstones"] * 8 + payload_edit
        payload[at] ^= 0xFF
    body = {k: v for k, v in head.items() if k != "sha256"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode())
    digest.update(payload)
    out = json.dumps({**body, "sha256": digest.hexdigest()}).encode()
    path.write_bytes(MAGIC + struct.pack("<Q", len(out)) + out + bytes(payload))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("forged", ["faiss-header-garbage", "kind", "dim-only"])
def test_a_file_with_a_forged_checksum_does_not_crash_the_process(
    kind: str,
    forged: str,
    built: Built,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the checksum: FAISS refuses garbage with an exception (never an abort), and
    an index that is not what the header says (kind, dimension) is not served."""
    folder = tmp_path / "c"
    vecs = _copy(built, kind, folder)
    if forged == "faiss-header-garbage":
        _forge(folder / INDEX, payload_edit=1)  # the fourcc FAISS reads first
    elif forged == "kind":
        _forge(folder / INDEX, kind="ivf" if kind != "ivf" else "hnsw")
    else:  # the header says our dimension; the index inside is of another
        shutil.copy(built("wide")[0] / INDEX, folder / INDEX)
        _forge(folder / INDEX, dim=DIM)
    _reopen_and_check(folder, vecs, caplog).close()


def test_faiss_running_out_of_memory_on_a_file_is_a_rebuild(
    built: Built,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FAISS's reader raises MemoryError (std::bad_alloc) when a size it reads is garbage:
    the file is set aside like any other it cannot read."""
    folder = tmp_path / "c"
    vecs = _copy(built, "hnsw", folder)

    def bad_alloc(*_: object) -> None:
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(faiss, "deserialize_index", bad_alloc)
    _reopen_and_check(folder, vecs, caplog).close()
    assert len(list(folder.glob("index.damaged*"))) == 1


def test_a_file_saved_before_it_named_its_snapshot_is_rebuilt_once(
    built: Built, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The older layout had no "snapshot" field: rebuilt (not set aside, it is not
    damaged), and the next snapshot's file is loaded on the open after."""
    folder = tmp_path / "c"
    vecs = _copy(built, "hnsw", folder)
    _forge(folder / INDEX, drop="snapshot")
    col = _reopen_and_check(folder, vecs, caplog)
    assert "no 'snapshot' in its header" in caplog.text
    assert not list(folder.glob("index.damaged*"))
    col.upsert(["late"], unit_rows(1, DIM, 99), [{}])
    col.snapshot()
    col.close()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        Collection(folder).close()
    assert LOADED in caplog.text
