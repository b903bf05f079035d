"""The scale part of `contrastive bench search`: what a large collection costs to keep.

Over the run's N vectors, in one process, each against a reference from the same run:
1. restart: open an HNSW collection of N items with its saved index, and again with the
   index file removed (a rebuild from the vectors, what every restart did before the
   index was saved) -> seconds and the rebuild / saved ratio; a flat one for comparison;
2. write cost: one durable 1,000-vector upsert into a collection of `small` items and
   into one of N items -> median and mean seconds (each size runs through the upsert
   whose snapshot falls due, so the mean carries the snapshot's cost) and N / small;
3. filtered search: queries/s and recall@k with a filter that matches 10% and one that
   matches 50% of the items, against unfiltered search of the same collection (exact
   truth computed over the matching vectors);
4. the Qdrant backend (qdrant-client's local mode, or a server with --qdrant-url)
   against the FAISS backend on `backend_n` of the vectors (contrastkit.service.bench.backends).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.service.index.embedded.collection import Collection
from contrastkit.service.index.embedded.index_file import INDEX
from contrastkit.service.index.types import IndexSpec

UPSERT = 1000
UPSERTS = 30  # 1,000-vector upserts timed per size at least, and through one snapshot
MAX_UPSERTS = 3000  # ... but no more (a log as large as 3M vectors is a long bench)
MODEL_ID = "bench:random"


def _collection(folder: Path, spec: IndexSpec, base: np.ndarray, meta: bool = False) -> float:
    """A closed collection of `base` (ids "0".."n-1", a snapshot) -> seconds to fill it."""
    Collection.create(folder, folder.name, MODEL_ID, base.shape[1], spec)
    col = Collection(folder, snapshot_every=10**9)  # one snapshot, at the end
    t0 = time.perf_counter()
    for s in range(0, len(base), 10_000):
        e = min(len(base), s + 10_000)
        metadata = [{"bucket": i % 10} if meta else {} for i in range(s, e)]
        col.upsert([str(i) for i in range(s, e)], base[s:e], metadata)
    col.snapshot()
    col.close()
    return time.perf_counter() - t0


def _open_s(folder: Path) -> float:
    t0 = time.perf_counter()
    col = Collection(folder)
    col.count  # noqa: B018 - the first read: the collection is serving
    seconds = time.perf_counter() - t0
    col.close()
    return seconds


def restart_rows(tmp: Path, base: np.ndarray) -> dict[str, Any]:
    """Restart seconds of an HNSW collection with and without its saved index, and flat."""
    out: dict[str, Any] = {"n": len(base)}
    hnsw = tmp / "restart-hnsw"
    print(f"restart: building an HNSW collection of {len(base):,} ...", flush=True)
    out["hnsw_fill_s"] = _collection(hnsw, IndexSpec(kind="hnsw"), base)
    out["hnsw_saved_index_s"] = _open_s(hnsw)
    (hnsw / INDEX).unlink()  # as before the index was saved: rebuilt on every open
    out["hnsw_rebuild_s"] = _open_s(hnsw)
    out["rebuild_over_saved"] = out["hnsw_rebuild_s"] / out["hnsw_saved_index_s"]
    flat = tmp / "restart-flat"
    _collection(flat, IndexSpec(kind="flat"), base)
    out["flat_s"] = _open_s(flat)
    print(
        f"  restart HNSW: {out['hnsw_saved_index_s']:.2f} s with the saved index, "
        f"{out['hnsw_rebuild_s']:.2f} s rebuilding ({out['rebuild_over_saved']:.1f}x); "
        f"flat {out['flat_s']:.2f} s",
        flush=True,
    )
    return out


def upsert_cost(tmp: Path, base: np.ndarray, small: int) -> dict[str, Any]:
    """Seconds per durable 1,000-vector upsert into `small` items and into len(base).

    Each size runs from an open with an empty log through the upsert whose snapshot
    falls due (at least UPSERTS), so the mean carries exactly what the snapshots cost
    per write, amortised: the figure "a write costs what it changes" is about."""
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {"small": small, "large": len(base), "upsert": UPSERT}
    for label, n in (("small", small), ("large", len(base))):
        folder = tmp / f"upsert-{label}"
        _collection(folder, IndexSpec(kind="flat"), base[:n])
        col = Collection(folder)  # the default snapshot rule
        times: list[float] = []
        snapshots = 0
        while (len(times) < UPSERTS or not snapshots) and len(times) < MAX_UPSERTS:
            vecs = base[rng.integers(0, len(base), UPSERT)]
            ids = [f"new-{len(times)}-{i}" for i in range(UPSERT)]
            t0 = time.perf_counter()
            col.upsert(ids, vecs, [{} for _ in ids])
            times.append(time.perf_counter() - t0)
            snapshots += col.log_records == 0
        col.close()
        out[f"{label}_upserts"] = len(times)
        out[f"{label}_snapshots"] = snapshots
        out[f"{label}_median_s"] = statistics.median(times)
        out[f"{label}_mean_s"] = statistics.fmean(times)
        out[f"{label}_max_s"] = max(times)
    out["median_ratio"] = out["large_median_s"] / out["small_median_s"]
    out["mean_ratio"] = out["large_mean_s"] / out["small_mean_s"]
    print(
        f"  1,000-vector upsert: {out['small_median_s'] * 1e3:.1f} ms at {small:,} items, "
        f"{out['large_median_s'] * 1e3:.1f} ms at {len(base):,} (median ratio "
        f"{out['median_ratio']:.2f}x); mean through a snapshot {out['small_mean_s'] * 1e3:.1f}"
        f" / {out['large_mean_s'] * 1e3:.1f} ms ({out['mean_ratio']:.2f}x; "
        f"{out['small_upserts']} / {out['large_upserts']} upserts, "
        f"{out['small_snapshots']} / {out['large_snapshots']} snapshots)",
        flush=True,
    )
    return out


def filtered_rows(
    tmp: Path, base: np.ndarray, queries: np.ndarray, k: int, seconds: float
) -> dict[str, Any]:
    """Filtered against unfiltered search of an HNSW collection: queries/s and recall."""
    folder = tmp / "filtered"
    _collection(folder, IndexSpec(kind="hnsw"), base, meta=True)
    col = Collection(folder)
    bucket = np.arange(len(base)) % 10
    cases: dict[str, tuple[dict[str, Any] | None, np.ndarray]] = {
        "unfiltered": (None, np.ones(len(base), bool)),
        "10%": ({"bucket": 3}, bucket == 3),
        "50%": ({"bucket": {"$in": [0, 1, 2, 3, 4]}}, bucket < 5),
    }
    from contrastkit.service.index.filters import parse_filter

    out: dict[str, Any] = {}
    for name, (where, mask) in cases.items():
        matcher = parse_filter(where) if where else None
        keep = np.flatnonzero(mask)
        truth = keep[np.argsort(-(queries @ base[keep].T), axis=1)[:, :k]]
        got = col.search(queries, k, matcher)
        found = sum(
            len({int(h.id) for h in g} & set(t.tolist())) for g, t in zip(got, truth, strict=True)
        )
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            col.search(queries[n % len(queries) : n % len(queries) + 1], k, matcher)
            n += 1
        out[name] = {
            "queries_per_s": n / (time.perf_counter() - t0),
            "recall": found / truth.size,
        }
        print(
            f"  search {name:>10}: {out[name]['queries_per_s']:,.0f} q/s, "
            f"recall@{k} {out[name]['recall']:.4f}",
            flush=True,
        )
    col.close()
    for name in ("10%", "50%"):
        out[name]["qps_over_unfiltered"] = (
            out[name]["queries_per_s"] / out["unfiltered"]["queries_per_s"]
        )
    return out
