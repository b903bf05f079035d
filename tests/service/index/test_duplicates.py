"""contrastkit.service.index.duplicates on every backend: the same groups as a brute-force
comparison, exactly (flat) and through each engine's own nearest-neighbour search (HNSW, Qdrant)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from contrastkit.service.index import duplicates
from contrastkit.service.index.backend import CollectionBackend
from contrastkit.service.index.duplicates import DuplicateQuery, find_duplicates
from contrastkit.service.index.filters import parse_filter
from contrastkit.service.index.types import CollectionError, IndexSpec

DIM = 32


def _items() -> tuple[list[str], np.ndarray]:
    """80 random unit vectors, and for every 7th one 1-3 noisy copies ("b007-c0", ...):
    a copy scores about 0.99 with its original, two random vectors below 0.7."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(80, DIM))
    ids, rows = [f"b{i:03d}" for i in range(80)], list(base)
    for i in range(0, 80, 7):
        for c in range(i % 3 + 1):
            ids.append(f"b{i:03d}-c{c}")
            rows.append(base[i] + 0.1 * rng.normal(size=DIM))
    x = np.asarray(rows, np.float32)
    return ids, x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(ids: list[str], x: np.ndarray, threshold: float) -> list[list[str]]:
    comps = duplicates._Components(len(ids))
    i, j = np.nonzero(np.triu(x @ x.T >= threshold, 1))
    for a, b in zip(i, j, strict=True):  # one pair at a time: the plain definition
        comps.join(np.asarray([a]), np.asarray([b]), np.ones(1, np.float32))
    return [g.ids for g in comps.groups(ids)]


@pytest.fixture(params=["faiss", "qdrant"])
def backend(request: pytest.FixtureRequest) -> CollectionBackend:
    name = "faiss_backend" if request.param == "faiss" else "qdrant_backend"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def _query(where: Any = None, **kw: Any) -> DuplicateQuery:
    args = {"threshold": 0.9, "limit": 100, "max_items": None, "max_scan": 10_000} | kw
    return DuplicateQuery(where=parse_filter(where), **args)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_groups_match_a_brute_force_comparison(backend: CollectionBackend, kind: str) -> None:
    ids, x = _items()
    backend.create("c", "m", DIM, IndexSpec(kind=kind))  # type: ignore[arg-type]
    col = backend.get("c")
    col.upsert(ids, x, [{"copy": "-" in i} for i in ids])
    got = find_duplicates(col, _query())
    assert got.exact is (kind == "flat") and got.n_items_scanned == len(ids)
    expected = _brute_force(ids, x, 0.9)
    assert len(expected) == 12 and [g.ids for g in got.groups] == expected
    # only the copies: each group loses its original, those of one copy vanish
    copies = find_duplicates(col, _query({"copy": True}))
    assert [g.ids for g in copies.groups] == [[i for i in g if "-" in i] for g in expected[:8]]


def test_blocks_of_rows_give_the_same_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    ids, x = _items()
    whole = duplicates._Components(len(ids))
    duplicates._join_all_pairs(whole, x, 0.9)
    monkeypatch.setattr(duplicates, "BLOCK_BYTES", 4 * len(ids) * 3)  # 3 rows a block
    blocked = duplicates._Components(len(ids))
    duplicates._join_all_pairs(blocked, x, 0.9)
    assert [g.ids for g in blocked.groups(ids)] == [g.ids for g in whole.groups(ids)]


def test_more_than_max_scan_is_refused(faiss_backend: CollectionBackend) -> None:
    ids, x = _items()
    faiss_backend.create("c", "m", DIM)
    col = faiss_backend.get("c")
    col.upsert(ids, x, [{} for _ in ids])
    with pytest.raises(CollectionError) as e:
        find_duplicates(col, _query(max_scan=50))
    assert e.value.code == "scan_too_large" and "50" in e.value.message
    got = find_duplicates(col, _query(max_scan=50, max_items=50))
    assert got.truncated and got.n_items_scanned == 50
