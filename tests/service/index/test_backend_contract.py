"""One contract for every collection backend: the FAISS store adapter (in a folder),
Qdrant's embedded local mode (in a folder) and, when CONTRASTIVE_QDRANT_URL is set, a real
Qdrant server. Each test below runs on each; the truth is numpy on the same data."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contrastkit.service.index.backend import (
    CollectionBackend,
    CollectionHandle,
    copy_collection,
    iter_items,
)
from contrastkit.service.index.embedded import collection
from contrastkit.service.index.embedded.backend import FaissBackend
from contrastkit.service.index.filters import parse_filter
from contrastkit.service.index.types import CollectionError, Hit, IndexSpec

pytest.importorskip("qdrant_client")
from contrastkit.service.index.qdrant.backend import QdrantBackend
from contrastkit.service.index.qdrant.connection import QdrantConfig
from tests.helpers import unit_rows

DIM = 16
FLAT = IndexSpec(kind="flat")
SERVER_URL = os.environ.get("CONTRASTIVE_QDRANT_URL")


class Opener:
    """Opens backends of one kind on the same storage; closes what is left open."""

    def __init__(self, make: Callable[[], CollectionBackend]) -> None:
        self.make = make
        self.opened: list[CollectionBackend] = []

    def __call__(self) -> CollectionBackend:
        b = self.make()
        self.opened.append(b)
        return b

    def close(self, b: CollectionBackend) -> None:
        self.opened.remove(b)
        b.close()


def _maker(kind: str, tmp: Path) -> Callable[[], CollectionBackend]:
    if kind == "faiss":
        return lambda: FaissBackend.open(tmp / "faiss")
    if kind == "qdrant-local":
        return lambda: QdrantBackend(QdrantConfig(path=tmp / "qdrant"))
    if not SERVER_URL:
        pytest.skip("CONTRASTIVE_QDRANT_URL is not set: no Qdrant server to test against")
    prefix = f"ctest{uuid.uuid4().hex[:8]}"  # this test's own collections on a shared server
    key = os.environ.get("CONTRASTIVE_QDRANT_API_KEY")
    return lambda: QdrantBackend(QdrantConfig(url=SERVER_URL, api_key=key, prefix=prefix))


def _clean_server(b: CollectionBackend) -> None:
    for name in [c.name for c in b.list()] + list(b.problems):
        b.drop(name)
    if isinstance(b, QdrantBackend):
        b.client.delete_collection(b.configs)


@pytest.fixture(params=["faiss", "qdrant-local", "qdrant-server"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    op = Opener(_maker(request.param, tmp_path))
    yield op
    if request.param == "qdrant-server":
        _clean_server(op.opened[0] if op.opened else op())
    for b in list(op.opened):
        op.close(b)


@pytest.fixture
def backend(opener: Opener) -> CollectionBackend:
    return opener()


def filled(backend: CollectionBackend, n: int = 60, spec: IndexSpec = FLAT) -> CollectionHandle:
    backend.create("c", "model-a", DIM, spec)
    h = backend.get("c")
    h.upsert([f"id{i}" for i in range(n)], unit_rows(n, DIM), [{"i": i} for i in range(n)])
    return h


def ids_scores(hits: list[Hit]) -> tuple[list[str], np.ndarray]:
    return [h.id for h in hits], np.array([h.score for h in hits])


def exact_top(
    queries: np.ndarray, vecs: np.ndarray, ids: list[str], k: int
) -> list[tuple[list[str], np.ndarray]]:
    """numpy's answer: for each query, the k best ids by inner product, and their scores."""
    sims = queries @ vecs.T
    out = []
    for row in sims:
        order = np.argsort(-row, kind="stable")[:k]
        out.append(([ids[j] for j in order], row[order]))
    return out


# -- collections ---------------------------------------------------------------------------------
def test_create_list_drop(backend: CollectionBackend) -> None:
    assert isinstance(backend, CollectionBackend)
    assert backend.list() == []
    spec = IndexSpec(kind="hnsw", m=16, ef_search=64)
    info = backend.create("b-col", "model-b", 8, spec)
    backend.create("a.col", "model-a", DIM)
    assert (info.name, info.model_id, info.dim, info.count, info.index) == (
        "b-col",
        "model-b",
        8,
        0,
        spec,
    )
    assert [c.name for c in backend.list()] == ["a.col", "b-col"]
    handle = backend.get("b-col")
    assert isinstance(handle, CollectionHandle)
    assert (handle.name, handle.model_id, handle.dim) == ("b-col", "model-b", 8)

    with pytest.raises(CollectionError) as err:
        backend.create("b-col", "model-b", 8)
    assert err.value.code == "collection_exists"
    backend.drop("b-col")
    assert [c.name for c in backend.list()] == ["a.col"]
    for call in (lambda: backend.drop("b-col"), lambda: backend.get("b-col")):
        with pytest.raises(CollectionError) as err:
            call()
        assert err.value.code == "collection_not_found"
    assert backend.problems == {}


@pytest.mark.parametrize(
    ("name", "dim", "code"),
    [("../x", 4, "invalid_name"), ("", 4, "invalid_name"), ("ok", 0, "invalid_dimension")],
)
def test_create_refuses_bad_names_and_dims(
    backend: CollectionBackend, name: str, dim: int, code: str
) -> None:
    with pytest.raises(CollectionError) as err:
        backend.create(name, "m", dim)
    assert err.value.code == code
    assert backend.list() == []


def test_a_dropped_name_can_be_created_again_empty(backend: CollectionBackend) -> None:
    filled(backend, 5)
    backend.drop("c")
    backend.create("c", "model-b", 4)
    h = backend.get("c")
    assert (h.count(), h.model_id, h.dim) == (0, "model-b", 4)


# -- items ---------------------------------------------------------------------------------------
def test_upsert_then_get(backend: CollectionBackend) -> None:
    backend.create("c", "m", DIM)
    h = backend.get("c")
    vecs = unit_rows(3, DIM)
    # user keys named like the Qdrant payload's own keys must come back unchanged
    meta: list[dict[str, Any]] = [
        {"_id": "not-me", "meta": {"x": 1}, "_keys": 0},
        {"a.b": [1, "x"], "nested": {"k": None}},
        {},
    ]
    assert h.upsert(["x", "ü/ß y", "z" * 256], vecs, meta) == 3
    assert h.count() == 3
    for id_, vec, m in zip(["x", "ü/ß y", "z" * 256], vecs, meta, strict=True):
        got = h.get(id_)
        assert got is not None
        assert got.id == id_
        assert got.metadata == m
        assert got.vector is not None
        np.testing.assert_allclose(got.vector, vec, atol=1e-6)
    assert h.get("missing") is None


def test_an_upsert_overwrites_and_a_repeated_id_keeps_its_last(backend: CollectionBackend) -> None:
    h = filled(backend, 10)
    v = unit_rows(3, DIM, seed=5)
    assert h.upsert(["id3", "new", "id3"], v, [{"v": 1}, {"v": 2}, {"v": 3}]) == 2
    assert h.count() == 11
    got = h.get("id3")
    assert got is not None and got.metadata == {"v": 3}
    assert got.vector is not None
    np.testing.assert_allclose(got.vector, v[2], atol=1e-6)
    hit = h.search(v[2:3], 1)[0][0]  # the index serves the new vector, not the old one
    assert (hit.id, hit.metadata) == ("id3", {"v": 3})
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_delete_by_ids_counts_the_present_ones(backend: CollectionBackend) -> None:
    h = filled(backend, 10)
    assert h.delete(["id1", "id2", "id2", "nope"]) == 2
    assert h.count() == 8
    assert h.get("id1") is None and h.get("id3") is not None
    assert h.delete(["id1"]) == 0
    assert "id1" not in {hit.id for hit in h.search(unit_rows(1, DIM, seed=9), 10)[0]}


def test_delete_by_filter(backend: CollectionBackend) -> None:
    h = filled(backend, 30)
    assert h.delete_where({"i": {"$lt": 10}}) == 10
    assert h.count() == 20
    assert sorted(it.id for it in iter_items(h, 7)) == sorted(f"id{i}" for i in range(10, 30))
    assert h.delete_where({"i": {"$in": []}}) == 0
    with pytest.raises(CollectionError) as err:
        h.delete_where({})
    assert err.value.code == "invalid_filter"
    assert h.count() == 20


def test_upsert_and_search_refuse_wrong_shapes(backend: CollectionBackend) -> None:
    h = filled(backend, 3)
    with pytest.raises(CollectionError) as err:
        h.upsert(["a"], unit_rows(1, DIM + 1), [{}])
    assert err.value.code == "wrong_dimension"
    with pytest.raises(CollectionError) as err:
        h.upsert(["a", "b"], unit_rows(1, DIM), [{}])
    assert err.value.code == "invalid_request"
    with pytest.raises(CollectionError) as err:
        h.search(unit_rows(1, DIM), 0)
    assert err.value.code == "invalid_k"
    assert h.count() == 3


# -- scroll --------------------------------------------------------------------------------------
def test_scroll_returns_every_id_exactly_once(backend: CollectionBackend) -> None:
    h = filled(backend, 53)
    vecs = unit_rows(53, DIM)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = h.scroll(cursor, 7, vectors=True)
        pages += 1
        assert len(page.items) <= 7
        for it in page.items:
            i = int(it.id[2:])
            assert it.metadata == {"i": i}
            assert it.vector is not None
            np.testing.assert_allclose(it.vector, vecs[i], atol=1e-6)
        seen += [it.id for it in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == sorted(f"id{i}" for i in range(53))
    assert pages in (8, 9)  # 53 = 7 * 7 + 4 (a backend may end with an empty page)
    assert h.scroll(None, 2).items[0].vector is None


def test_scroll_while_writing_sees_each_lasting_item_once(backend: CollectionBackend) -> None:
    h = filled(backend, 40)
    first = h.scroll(None, 10)
    assert first.next_cursor is not None
    seen = [it.id for it in first.items]
    unseen = sorted({f"id{i}" for i in range(40)} - set(seen))
    h.delete([unseen[0]])  # removed before the scroll reaches it
    h.upsert(["late"], unit_rows(1, DIM, seed=3), [{}])  # written meanwhile: may or may not appear
    h.upsert([seen[0]], unit_rows(1, DIM, seed=4), [{"i": -1}])  # overwritten after it was seen
    cursor: str | None = first.next_cursor
    while cursor is not None:
        page = h.scroll(cursor, 10)
        seen += [it.id for it in page.items]
        cursor = page.next_cursor
    lasting = {f"id{i}" for i in range(40)} - {unseen[0]}
    assert all(seen.count(i) == 1 for i in lasting)
    assert set(seen) - lasting <= {"late"}


def test_scroll_refuses_a_bad_page_size(backend: CollectionBackend) -> None:
    h = filled(backend, 3)
    for limit in (0, 10_001):
        with pytest.raises(CollectionError) as err:
            h.scroll(None, limit)
        assert err.value.code == "invalid_request"


# -- search --------------------------------------------------------------------------------------
def test_search_matches_exact_inner_product(backend: CollectionBackend) -> None:
    h = filled(backend, 60)
    queries = unit_rows(4, DIM, seed=1)
    want = exact_top(queries, unit_rows(60, DIM), [f"id{i}" for i in range(60)], 5)
    got = h.search(queries, 5)
    for hits, (ids, scores) in zip(got, want, strict=True):
        assert [x.id for x in hits] == ids
        np.testing.assert_allclose([x.score for x in hits], scores, atol=1e-5)
        assert hits[0].metadata == {"i": int(ids[0][2:])}
    assert [len(r) for r in h.search(queries, 100)] == [60] * 4  # k above count: all of them


def test_search_of_an_empty_collection(backend: CollectionBackend) -> None:
    backend.create("c", "m", DIM)
    assert backend.get("c").search(unit_rows(2, DIM), 3) == [[], []]


LABELS = ["cat", "dog", "fish", "bird"]


def rich_meta(i: int) -> dict[str, Any]:
    """Metadata with the cases the filter semantics single out."""
    m: dict[str, Any] = {"label": LABELS[i % 4], "year": 1990 + i % 40, "ok": i % 2 == 0}
    if i % 7 == 0:
        m["year"] = float(m["year"])  # 2001.0 equals 2001
    if i % 3 == 0:
        m["caption"] = f"c{i}"
    if i % 10 == 1:
        m["label"] = ["cat", "dog"]  # an array never equals a scalar
    if i % 5 == 0:
        m["a.b"] = i % 3  # a key with a dot
        m["_id"] = "evil"  # a key named like the payload's own
    if i % 6 == 0:
        m['say "hi"'] = 1  # a key Qdrant's path syntax cannot name
    if i % 9 == 0:
        m["label"] = 1  # 1 is not true
    return m


FILTERS: list[Any] = [
    {"label": "cat"},
    {"label": {"$eq": "dog"}},
    {"label": {"$in": ["dog", "fish"]}},
    {"label": {"$in": ["cat", 1, True, 2.5]}},
    {"label": {"$in": []}},
    {"label": 1},
    {"year": 2001},
    {"year": {"$gte": 2000, "$lt": 2010}},
    {"year": {"$gt": 2025.5}},
    {"caption": {"$exists": True}},
    {"caption": {"$exists": False}},
    {"ok": True},
    {"a.b": 2},
    {"_id": "evil"},
    {'say "hi"': {"$exists": True}},
    {'say "hi"': 1, "ok": True},
    {"label": "cat", "year": {"$lt": 2000}, "caption": {"$exists": False}},
]


@pytest.mark.parametrize("where", FILTERS, ids=[str(f) for f in FILTERS])
def test_filtered_search_returns_the_exact_matching_top_k(
    backend: CollectionBackend, where: Any
) -> None:
    n, k = 240, 6
    backend.create("c", "m", DIM, FLAT)
    h = backend.get("c")
    vecs, ids, meta = (
        unit_rows(n, DIM),
        [f"id{i}" for i in range(n)],
        [rich_meta(i) for i in range(n)],
    )
    h.upsert(ids, vecs, meta)
    f = parse_filter(where)
    keep = [i for i in range(n) if f.matches(meta[i])]
    queries = unit_rows(3, DIM, seed=2)
    want = exact_top(queries, vecs[keep], [ids[i] for i in keep], k)
    for hits, (want_ids, want_scores) in zip(h.search(queries, k, where), want, strict=True):
        assert len(hits) == min(k, len(keep))  # k come back whenever k match
        assert [x.id for x in hits] == want_ids
        np.testing.assert_allclose([x.score for x in hits], want_scores, atol=1e-5)
        assert all(f.matches(x.metadata) for x in hits)
    parsed, raw = h.search(queries, k, f)[0], h.search(queries, k, where)[0]  # Filter or JSON
    assert [x.id for x in parsed] == [x.id for x in raw]


def test_k_hits_come_back_when_near_decoys_only_contain_the_value(
    backend: CollectionBackend,
) -> None:
    """The 50 nearest items hold ["cat"] (no match) and 5 far ones "cat": all 5 return."""
    q = unit_rows(1, DIM, seed=7)
    decoys = q + 0.01 * unit_rows(50, DIM, seed=8)
    far = -q + 0.3 * unit_rows(5, DIM, seed=9)
    rest = unit_rows(100, DIM, seed=10)
    vecs = np.concatenate([decoys, far, rest])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    meta = [{"label": ["cat"]}] * 50 + [{"label": "cat"}] * 5 + [{"label": "dog"}] * 100
    backend.create("c", "m", DIM, IndexSpec(kind="hnsw"))
    h = backend.get("c")
    h.upsert([f"id{i}" for i in range(155)], vecs, meta)
    hits = h.search(q, 5, {"label": "cat"})[0]
    assert sorted(x.id for x in hits) == [f"id{i}" for i in range(50, 55)]


@pytest.mark.parametrize(
    ("where", "named"),
    [
        ({"year": {"$regex": "^19"}}, "'$regex'"),
        ({"$or": [{"a": 1}]}, "'$or'"),
        ({"year": {"$gt": "x"}}, "year.$gt"),
    ],
)
def test_a_bad_filter_is_invalid_filter_naming_it(
    backend: CollectionBackend, where: Any, named: str
) -> None:
    h = filled(backend, 5)
    for call in (lambda: h.search(unit_rows(1, DIM), 3, where), lambda: h.delete_where(where)):
        with pytest.raises(CollectionError) as err:
            call()
        assert err.value.code == "invalid_filter"
        assert named in err.value.message
    assert h.count() == 5


# -- durability ----------------------------------------------------------------------------------
def test_reopen_after_close_keeps_the_data(opener: Opener) -> None:
    b = opener()
    h = filled(b, 25, IndexSpec(kind="hnsw", ef_search=200))
    h.delete(["id0"])
    h.upsert(["id1"], unit_rows(1, DIM, seed=6), [{"i": "changed"}])
    queries = unit_rows(2, DIM, seed=3)
    before = h.search(queries, 5)
    info = h.info()
    opener.close(b)

    again = opener()
    h2 = again.get("c")
    assert h2.count() == 24
    assert h2.get("id0") is None
    got = h2.get("id1")
    assert got is not None and got.metadata == {"i": "changed"}
    after = h2.search(queries, 5)
    assert [ids_scores(r)[0] for r in after] == [ids_scores(r)[0] for r in before]
    back = h2.info()
    assert (back.model_id, back.dim, back.index, back.created_at) == (
        info.model_id,
        info.dim,
        info.index,
        info.created_at,
    )


# -- across backends -----------------------------------------------------------------------------
def test_faiss_and_qdrant_give_the_same_hits_and_scores(tmp_path: Path) -> None:
    n, dim, k = 500, 64, 10
    vecs, ids = unit_rows(n, dim, seed=11), [f"id{i}" for i in range(n)]
    meta = [rich_meta(i) for i in range(n)]
    queries = unit_rows(8, dim, seed=12)
    results = []
    for b in (FaissBackend.open(tmp_path / "f"), QdrantBackend(QdrantConfig(path=tmp_path / "q"))):
        b.create("c", "m", dim, FLAT)
        h = b.get("c")
        h.upsert(ids, vecs, meta)
        results.append((h.search(queries, k), h.search(queries, k, {"year": {"$gte": 2010}})))
        b.close()
    for faiss_rows, qdrant_rows in zip(*results, strict=True):
        for f_hits, q_hits in zip(faiss_rows, qdrant_rows, strict=True):
            assert len(f_hits) == k
            assert [x.id for x in f_hits] == [x.id for x in q_hits]
            np.testing.assert_allclose(
                [x.score for x in f_hits], [x.score for x in q_hits], atol=1e-5
            )


def test_copy_collection_between_backends_round_trips(tmp_path: Path) -> None:
    faiss = FaissBackend.open(tmp_path / "f")
    qdrant = QdrantBackend(QdrantConfig(path=tmp_path / "q"))
    spec = IndexSpec(kind="hnsw", m=8)
    faiss.create("c", "model-x", DIM, spec)
    faiss.get("c").upsert(
        [f"id{i}" for i in range(37)], unit_rows(37, DIM), [{"i": i} for i in range(37)]
    )
    assert copy_collection(faiss, qdrant, "c", batch=10) == 37
    faiss.drop("c")
    assert copy_collection(qdrant, faiss, "c", batch=8) == 37
    info = faiss.get("c").info()
    assert (info.model_id, info.dim, info.index, info.count) == ("model-x", DIM, spec, 37)
    got = faiss.get("c").get("id5")
    assert got is not None and got.metadata == {"i": 5}
    assert got.vector is not None
    np.testing.assert_allclose(got.vector, unit_rows(37, DIM)[5], atol=1e-6)
    faiss.close()
    qdrant.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_faiss_selector_path_equals_the_exact_path(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above EXACT_FILTER_LIMIT matches the filter becomes the index's id selector: the
    same k hits as the exact path (flat exactly; HNSW and IVF at this size too)."""
    b = FaissBackend.open(tmp_path)
    b.create("c", "m", DIM, IndexSpec(kind=kind, nlist=4, nprobe=4))  # type: ignore[arg-type]
    h = b.get("c")
    meta = [rich_meta(i) for i in range(300)]
    h.upsert([f"id{i}" for i in range(300)], unit_rows(300, DIM), meta)
    assert h.info().active_index == kind
    queries = unit_rows(3, DIM, seed=4)
    where = {"label": "fish", "year": {"$lt": 2020}}
    exact = h.search(queries, 4, where)
    monkeypatch.setattr(collection, "EXACT_FILTER_LIMIT", 0)
    selected = h.search(queries, 4, where)
    assert [ids_scores(r)[0] for r in selected] == [ids_scores(r)[0] for r in exact]
    for a, b_ in zip(selected, exact, strict=True):
        np.testing.assert_allclose(ids_scores(a)[1], ids_scores(b_)[1], atol=1e-5)
    assert all(len(r) == 4 for r in exact)
    b.close()


def test_faiss_filter_cache_follows_every_write(tmp_path: Path) -> None:
    """A repeated filter is answered from its cached match set until the next write."""
    b = FaissBackend.open(tmp_path)
    b.create("c", "m", DIM, FLAT)
    h = b.get("c")
    vecs = unit_rows(4, DIM)
    h.upsert(["a", "b", "c", "d"], vecs, [{"t": 1}, {"t": 1}, {"t": 2}, {}])
    where = {"t": {"$in": [1]}}

    def found() -> list[str]:
        return sorted(x.id for x in h.search(vecs[:1], 10, where)[0])

    assert found() == ["a", "b"] == found()  # the second from the cache
    h.upsert(["c"], vecs[2:3], [{"t": 1}])  # now matches
    assert found() == ["a", "b", "c"]
    h.delete(["a"])
    assert found() == ["b", "c"]
    h.upsert(["b"], vecs[1:2], [{"t": 3}])  # no longer matches
    assert found() == ["c"]
    b.close()
