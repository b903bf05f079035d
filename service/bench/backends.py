"""Benchmark: the FAISS backend against the Qdrant backend on the same random unit vectors.

    python -m contrastkit.service.bench.backends --n 20000 --dim 384

Times, per backend: upserting N vectors in batches, reopening (close, open, first count),
batched search of Q queries unfiltered and with a filter matching about a tenth of the
items; recall@k of each against exact numpy search; and the Qdrant/FAISS ratio of each
time. Qdrant runs in local mode in a temporary folder unless a server url is given.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.service.index.backend import CollectionBackend
from contrastkit.service.index.types import IndexSpec

LABELS = 10  # the filter keeps label == 0: about 1/LABELS of the items
NAME = "bench"


def _unit(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _recall(hits: list[list[str]], truth: np.ndarray, ids: list[str]) -> float:
    """Share of the exact top-k ids (truth: int [q, k]) that came back."""
    found = sum(len({ids[j] for j in row} & set(h)) for row, h in zip(truth, hits, strict=True))
    return found / truth.size


def _exact(queries: np.ndarray, vecs: np.ndarray, k: int) -> np.ndarray:
    """Positions of the exact top-k of queries [q, d] among vecs [n, d] -> int [q, k]."""
    sims = queries @ vecs.T
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def _run_one(
    opener: Callable[[], CollectionBackend],
    data: dict[str, Any],
    k: int,
    batch: int,
) -> dict[str, float]:
    """Time one backend on `data` (ids, vecs, meta, queries, truth, truth_filtered)."""
    ids, vecs, meta, queries = data["ids"], data["vecs"], data["meta"], data["queries"]
    b = opener()
    b.create(NAME, "bench", vecs.shape[1], IndexSpec(kind="flat"))
    h = b.get(NAME)
    t0 = time.perf_counter()
    for s in range(0, len(ids), batch):
        h.upsert(ids[s : s + batch], vecs[s : s + batch], meta[s : s + batch])
    upsert_s = time.perf_counter() - t0
    b.close()

    t0 = time.perf_counter()
    b = opener()
    h = b.get(NAME)
    assert h.count() == len(ids)
    reopen_s = time.perf_counter() - t0

    h.search(queries[:1], k)  # warm-up
    t0 = time.perf_counter()
    hits = h.search(queries, k)
    search_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    filtered = h.search(queries, k, {"label": 0})
    filtered_s = time.perf_counter() - t0
    b.drop(NAME)
    b.close()

    keep = data["keep"]
    return {
        "upsert_s": upsert_s,
        "upsert_items_per_s": len(ids) / upsert_s,
        "reopen_s": reopen_s,
        "search_s": search_s,
        "search_qps": len(queries) / search_s,
        "filtered_search_s": filtered_s,
        "filtered_qps": len(queries) / filtered_s,
        "recall": _recall([[x.id for x in r] for r in hits], data["truth"], ids),
        "filtered_recall": _recall(
            [[x.id for x in r] for r in filtered], data["truth_filtered"], [ids[i] for i in keep]
        ),
    }


def bench_backends(
    n: int = 20_000,
    dim: int = 384,
    queries: int = 200,
    k: int = 10,
    batch: int = 1000,
    seed: int = 0,
    qdrant_url: str | None = None,
    qdrant_api_key: str | None = None,
) -> dict[str, Any]:
    """Both backends on the same N x dim unit vectors -> figures per backend and ratios
    (qdrant / faiss; above 1: Qdrant takes longer)."""
    from contrastkit.service.index.factory import QdrantConfig, open_backend

    rng = np.random.default_rng(seed)
    vecs = _unit(n, dim, rng)
    meta = [{"label": int(x)} for x in rng.integers(0, LABELS, n)]
    keep = [i for i, m in enumerate(meta) if m["label"] == 0]
    q = _unit(queries, dim, rng)
    data = {
        "ids": [f"item-{i}" for i in range(n)],
        "vecs": vecs,
        "meta": meta,
        "queries": q,
        "keep": keep,
        "truth": _exact(q, vecs, k),
        "truth_filtered": _exact(q, vecs[keep], k),
    }
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # local mode warns on reopen that it is meant for small collections: known
        warnings.filterwarnings("ignore", "Local mode is not recommended", UserWarning)
        root = Path(tmp)
        qcfg = (
            QdrantConfig(url=qdrant_url, api_key=qdrant_api_key, prefix="contrastive_bench")
            if qdrant_url
            else QdrantConfig(path=root / "qdrant")
        )
        faiss = _run_one(lambda: open_backend("faiss", root / "faiss"), data, k, batch)
        qdrant = _run_one(lambda: open_backend("qdrant", root, qcfg), data, k, batch)
    ratios = {
        key: qdrant[key] / faiss[key]
        for key in ("upsert_s", "reopen_s", "search_s", "filtered_search_s")
    }
    return {
        "n": n,
        "dim": dim,
        "queries": queries,
        "k": k,
        "qdrant_mode": "server" if qdrant_url else "local",
        "faiss": faiss,
        "qdrant": qdrant,
        "qdrant_over_faiss": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--qdrant-url", default=None, help="a server; default: local mode")
    args = p.parse_args(argv)
    result = bench_backends(args.n, args.dim, args.queries, args.k, qdrant_url=args.qdrant_url)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
