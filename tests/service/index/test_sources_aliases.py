"""Item sources and collection aliases on every backend: the embedded store and Qdrant's
local mode (the rules: contrastkit.service.index.items, contrastkit.service.index.aliases); and what
the embedded store keeps of both across a restart and a crash."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from contrastkit.service.index.backend import CollectionBackend, iter_items
from contrastkit.service.index.embedded.aliases import FILE
from contrastkit.service.index.embedded.backend import FaissBackend
from contrastkit.service.index.embedded.wal import Record
from contrastkit.service.index.items import MAX_SOURCE_BYTES
from contrastkit.service.index.types import CollectionError, IndexSpec

DIM = 8
FLAT = IndexSpec(kind="flat")
Maker = Callable[[], CollectionBackend]


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(params=["faiss", "qdrant-local"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Maker]:
    """Opens the backend on the test's folder (again after a close: the same data)."""
    opened: list[CollectionBackend] = []

    def open_() -> CollectionBackend:
        if request.param == "faiss":
            b: CollectionBackend = FaissBackend.open(tmp_path / "faiss", device="cpu")
        else:
            pytest.importorskip("qdrant_client")
            from contrastkit.service.index.qdrant.backend import QdrantBackend
            from contrastkit.service.index.qdrant.connection import QdrantConfig

            b = QdrantBackend(QdrantConfig(path=tmp_path / "qdrant"))
        opened.append(b)
        return b

    yield open_
    for b in opened:
        b.close()


def _code(fn: Callable[[], object]) -> str:
    with pytest.raises(CollectionError) as e:
        fn()
    return e.value.code


# -- sources --------------------------------------------------------------------------------
def test_sources_round_trip_through_get_scroll_and_search(make: Maker) -> None:
    b = make()
    b.create("c", "m", DIM, FLAT)
    col = b.get("c")
    v = _vecs(3)
    col.upsert(["a", "b", "t"], v, [{}, {"k": 1}, {}], ["/photos/a.png", None, "a red bicycle"])
    assert [col.get(i).source for i in "abt"] == ["/photos/a.png", None, "a red bicycle"]  # type: ignore[union-attr]
    assert {it.id: it.source for it in iter_items(col)} == {
        "a": "/photos/a.png",
        "b": None,
        "t": "a red bicycle",
    }
    hits = col.search(v[:1], 3)[0]
    assert hits[0].id == "a" and hits[0].source == "/photos/a.png"
    assert {h.id: h.source for h in hits}["b"] is None
    # the source is no metadata: a filter on a key named like ours finds nothing
    assert col.get("b").metadata == {"k": 1}  # type: ignore[union-attr]
    # an upsert replaces the whole item: without a source, the old one is gone
    col.upsert(["a"], v[:1], [{}])
    assert col.get("a").source is None  # type: ignore[union-attr]


def test_a_source_past_the_limit_is_refused_by_name(make: Maker) -> None:
    b = make()
    b.create("c", "m", DIM, FLAT)
    col = b.get("c")
    at_limit = "é" * (MAX_SOURCE_BYTES // 2)  # 2 bytes each: exactly the limit
    col.upsert(["ok"], _vecs(1), [{}], [at_limit])
    with pytest.raises(CollectionError) as e:
        col.upsert(["x", "y"], _vecs(2), [{}, {}], [None, at_limit + "e"])
    assert e.value.code == "invalid_source"
    assert "sources[1]" in e.value.message and str(MAX_SOURCE_BYTES) in e.value.message
    assert col.get("y") is None and col.get("ok").source == at_limit  # type: ignore[union-attr]
    assert _code(lambda: col.upsert(["z"], _vecs(1), [{}], ["a\x00b"])) == "invalid_source"
    assert _code(lambda: col.upsert(["z"], _vecs(1), [{}], [""])) == "invalid_source"


def test_sources_survive_a_reopen(make: Maker) -> None:
    b = make()
    b.create("c", "m", DIM, FLAT)
    b.get("c").upsert(["a", "b"], _vecs(2), [{}, {}], ["s3://bucket/a.jpg", None])
    b.close()
    col = make().get("c")
    assert col.get("a").source == "s3://bucket/a.jpg"  # type: ignore[union-attr]
    assert col.get("b").source is None  # type: ignore[union-attr]


def test_embedded_sources_survive_a_crash_in_the_log_and_a_snapshot(tmp_path: Path) -> None:
    """Sources written before a snapshot (in snapshot.bin) and after it (only in the log)
    are both there after a crash: the store is left without the snapshot a close writes."""
    root = tmp_path / "faiss"
    b = FaissBackend.open(root, device="cpu")
    b.create("c", "m", DIM, FLAT)
    col = b.get("c")
    col.upsert(["old", "gone"], _vecs(2), [{}, {}], ["/before/snapshot", "/deleted"])
    col.col.snapshot()
    col.upsert(["new"], _vecs(1, 1), [{}], ["/only/in/the/log"])
    col.delete(["gone"])
    b.store.close(snapshot=False)  # what a kill leaves: the log after the snapshot
    again = FaissBackend.open(root, device="cpu")
    try:
        got = again.get("c")
        assert got.info().log_records == 2  # replayed, not snapshotted
        assert got.get("old").source == "/before/snapshot"  # type: ignore[union-attr]
        assert got.get("new").source == "/only/in/the/log"  # type: ignore[union-attr]
        assert got.get("gone") is None
        assert got.search(_vecs(1, 1), 1)[0][0].source == "/only/in/the/log"
    finally:
        again.close()


def test_a_record_without_sources_reads_as_before() -> None:
    """Logs written before sources hold no "sources" key; one without any writes none."""
    rec = Record(1, 7, ["a"], [{}], _vecs(1))
    assert b'"sources"' not in rec.encode()
    back = Record.decode(rec.encode()[8:], DIM)
    assert back.sources is None and back.ids == ["a"]
    with_src = Record(1, 8, ["a"], [{}], _vecs(1), ["/x"])
    assert Record.decode(with_src.encode()[8:], DIM).sources == ["/x"]


# -- aliases --------------------------------------------------------------------------------
def test_an_alias_is_set_switched_and_removed(make: Maker) -> None:
    b = make()
    for name, seed in (("v1", 0), ("v2", 1)):
        b.create(name, "m", DIM, FLAT)
        b.get(name).upsert([name], _vecs(1, seed), [{}])
    assert b.set_alias("live", "v1") is None
    assert b.aliases() == {"live": "v1"}
    assert b.get("live").name == "v1"
    assert b.get("live").search(_vecs(1), 1)[0][0].id == "v1"
    assert b.set_alias("live", "v2") == "v1"
    assert b.get("live").search(_vecs(1), 1)[0][0].id == "v2"
    assert {c.name for c in b.list()} == {"v1", "v2"}  # an alias is not listed as one
    assert b.remove_alias("live") == "v2"
    assert b.aliases() == {}
    assert _code(lambda: b.get("live")) == "collection_not_found"
    assert _code(lambda: b.remove_alias("live")) == "alias_not_found"


def test_alias_conflicts(make: Maker) -> None:
    b = make()
    b.create("a", "m", DIM, FLAT)
    b.create("b", "m", DIM, FLAT)
    b.set_alias("live", "a")
    assert _code(lambda: b.set_alias("b", "a")) == "alias_conflict"  # hides a collection
    assert _code(lambda: b.set_alias("x", "missing")) == "collection_not_found"
    assert _code(lambda: b.set_alias("x", "live")) == "collection_not_found"  # no chains
    assert _code(lambda: b.set_alias("bad/name", "a")) == "invalid_name"
    assert _code(lambda: b.create("live", "m", DIM, FLAT)) == "alias_conflict"
    with pytest.raises(CollectionError) as e:
        b.drop("a")
    assert e.value.code == "collection_aliased" and "'live'" in e.value.message
    assert _code(lambda: b.drop("live")) == "alias_conflict"  # never its collection
    assert b.get("a").name == "a" and b.aliases() == {"live": "a"}
    b.set_alias("live", "b")
    b.drop("a")  # nothing points to it now
    assert b.get("live").name == "b"


def test_aliases_survive_a_reopen(make: Maker) -> None:
    b = make()
    b.create("a", "m", DIM, FLAT)
    b.set_alias("live", "a")
    b.close()
    again = make()
    assert again.aliases() == {"live": "a"}
    assert again.get("live").name == "a"


def test_a_search_through_a_switching_alias_never_misses(make: Maker) -> None:
    """While the alias flips between two collections, every search through it is answered
    by one of them: never collection_not_found."""
    b = make()
    for name, seed in (("v1", 0), ("v2", 1)):
        b.create(name, "m", DIM, FLAT)
        b.get(name).upsert([name], _vecs(1, seed), [{}])
    b.set_alias("live", "v1")
    seen: set[str] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            try:
                seen.add(b.get("live").search(_vecs(1), 1)[0][0].id)
            except BaseException as e:  # reported below, in the test thread
                errors.append(e)
                return

    reader = threading.Thread(target=search)
    reader.start()
    try:
        for i in range(20):
            b.set_alias("live", "v2" if i % 2 == 0 else "v1")
    finally:
        stop.set()
        reader.join()
    assert not errors, errors
    assert seen <= {"v1", "v2"} and seen
    assert b.get("live").name == "v1"


def test_the_embedded_alias_file_is_written_atomically_and_checked(tmp_path: Path) -> None:
    root = tmp_path / "faiss"
    b = FaissBackend.open(root, device="cpu")
    b.create("a", "m", DIM, FLAT)
    b.set_alias("live", "a")
    b.close()
    assert [p.name for p in root.iterdir() if p.name.endswith(".tmp")] == []
    (root / FILE).write_text('{"version": 99, "aliases": {}}')
    with pytest.raises(CollectionError) as e:
        FaissBackend.open(root, device="cpu")
    assert e.value.code == "collection_corrupt" and FILE in e.value.message
    (root / FILE).unlink()  # without the file: no aliases, the collections as they were
    again = FaissBackend.open(root, device="cpu")
    try:
        assert again.aliases() == {} and again.get("a").name == "a"
    finally:
        again.close()
