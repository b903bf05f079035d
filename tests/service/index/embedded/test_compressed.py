"""Compressed index kinds: ivfpq (product-quantised codes, re-ranked exactly) and hnsw_sq8
(8-bit scalar codes). Exact until there are enough vectors to train, then compressed;
recall against exact search is measured here on clustered data, as in the benchmark."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from contrastkit.service.index.embedded.collection import Collection
from contrastkit.service.index.embedded.faiss_index import PQ_MIN_TRAIN, SQ_MIN_TRAIN, pq_bytes
from contrastkit.service.index.types import CollectionError, IndexSpec, check_new

DIM, N, K = 32, 12_000, 10
SPECS = {
    "ivfpq": IndexSpec(kind="ivfpq", nlist=32, nprobe=8, pq_m=8),
    "hnsw_sq8": IndexSpec(kind="hnsw_sq8", m=16, ef_search=128),
}


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, DIM))
    v = centres[rng.integers(0, 60, n)] + 0.35 * rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    both = clustered(N + 200, 0)
    return both[:N], both[N:]


def recall(col: Collection, base: np.ndarray, queries: np.ndarray, gone: int = -1) -> float:
    """recall@K against exact search; item ids are row numbers, `gone` deleted."""
    sims = queries @ base.T
    if gone >= 0:
        sims[:, gone] = -np.inf
    truth = np.argsort(-sims, axis=1)[:, :K]
    got = col.search(queries, K)
    hits = [len({int(h.id) for h in g} & set(t.tolist())) for g, t in zip(got, truth, strict=True)]
    return sum(hits) / (K * len(queries))


@pytest.mark.parametrize(("kind", "floor"), [("ivfpq", 0.95), ("hnsw_sq8", 0.95)])
def test_compressed_kinds_train_when_they_can_and_keep_recall(
    kind: str,
    floor: float,
    data: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base, queries = data
    Collection.create(tmp_path / "c", "c", "m", DIM, SPECS[kind])
    col = Collection(tmp_path / "c")
    first = SQ_MIN_TRAIN // 2
    col.upsert([str(i) for i in range(first)], base[:first], [{} for _ in range(first)])
    assert col.info().active_index == "flat"  # too few vectors to train on: exact
    col.upsert([str(i) for i in range(first, N)], base[first:], [{} for _ in range(N - first)])
    assert col.info().active_index == kind
    r = recall(col, base, queries)
    assert r >= floor, (kind, r)
    # the exact re-ranking gives exact scores to what it returns
    hit = col.search(base[7:8], 1)[0][0]
    assert hit.id == "7" and hit.score == pytest.approx(1.0, abs=1e-5)
    col.delete(["7"])
    assert all(h.id != "7" for h in col.search(base[7:8], K)[0])
    col.snapshot()
    col.close()
    with caplog.at_level(logging.INFO):
        again = Collection(tmp_path / "c")
    assert "loaded its saved" in caplog.text and again.info().active_index == kind
    assert recall(again, base, queries, gone=7) >= floor
    again.close()


def test_pq_bytes_defaults_and_validation() -> None:
    auto = IndexSpec(kind="ivfpq")
    assert [pq_bytes(auto, d) for d in (384, 512, 768, 16, 7)] == [48, 64, 96, 2, 1]
    assert pq_bytes(IndexSpec(kind="ivfpq", pq_m=12), 384) == 12
    with pytest.raises(CollectionError, match="must divide the dimension 384"):
        check_new("c", 384, IndexSpec(kind="ivfpq", pq_m=7))
    assert PQ_MIN_TRAIN <= N  # the test above does train
