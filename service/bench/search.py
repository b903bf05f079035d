"""`contrastive bench search`: vector search, from raw FAISS up to the HTTP API.

In one run on one machine, over the same N vectors and the same queries:
1. raw FAISS: an IndexFlatIP alone, no ids, no metadata -> queries/s at batch 1 and 256;
2. in-process: our Collection (kind flat: ids, metadata, locking, hits as objects), as
   filled and again reopened from its snapshot (searched over the mapped file in place);
3. HTTP: `python -m contrastkit.service serve` on loopback over the same collection, pre-built here
   and closed before the server opens it; POST /v1/collections/NAME/search with raw
   vectors through contrastkit.service.bench.loadgen's client (one connection, requests back to
   back);
4. the ratios in-process / raw and HTTP / raw at each batch size;
5. recall@k and queries/s of IVF and HNSW collections at their default parameters, against
   exact search (IVF as trained while the vectors arrived, and again after a reopen, when
   it is rebuilt for the final count);
6. added vectors/s with durability on: upserts of 1,000 vectors, each fsynced;
7. scale (contrastkit.service.bench.search_scale): restart with the saved index against a rebuild,
   the cost of one 1,000-vector upsert at 10k items against N, filtered search against
   unfiltered, and the Qdrant backend (local mode, or --qdrant-url) against FAISS.

The vectors are synthetic unit vectors. By default they are clustered (a mixture of
Gaussians around n/100 random centres, as embeddings are: neighbours are meaningful);
`--data random` draws them uniformly on the sphere, where approximate search has nothing
to exploit and recall is a worst case. Throughput does not depend on which.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.service.bench import flags
from contrastkit.service.bench.loadgen import build_request, run_load
from contrastkit.service.bench.serve import environment, free_port, wait_ready, write_result
from contrastkit.service.index.embedded.store import CollectionStore
from contrastkit.service.index.types import IndexKind, IndexSpec

NAME = "bench"
BATCHES = (1, 64, 256)
APPROX: tuple[IndexKind, ...] = ("ivf", "hnsw", "ivfpq", "hnsw_sq8")
ADD_KINDS: tuple[IndexKind, ...] = ("flat", "hnsw")
MODEL_ID = "bench:random"  # vector queries check only the dimension, never the model

# its flags live in contrastkit.service.bench.flags, which `--help` imports without torch
add_arguments = flags.search


# -- data -------------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), np.float32)


def make_data(n: int, q: int, dim: int, kind: str, seed: int = 0) -> tuple[np.ndarray, ...]:
    """-> (base [n, dim], queries [q, dim]) unit float32, queries drawn like the base."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return _unit(rng.standard_normal((n, dim), np.float32)), _unit(
            rng.standard_normal((q, dim), np.float32)
        )
    centres = _unit(rng.standard_normal((max(1, n // 100), dim), np.float32))
    sigma = 1.0 / np.sqrt(dim)  # noise as long as the centre: cosine ~0.7 to it

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), np.float32)
        for s in range(0, m, 65536):
            e = min(m, s + 65536)
            noise = rng.standard_normal((e - s, dim), np.float32) * sigma
            out[s:e] = centres[rng.integers(0, len(centres), e - s)] + noise
        return _unit(out)

    return draw(n), draw(q)


# -- timing -----------------------------------------------------------------------------
def queries_per_s(
    search: Callable[[np.ndarray], Any], queries: np.ndarray, batch: int, seconds: float
) -> float:
    """Search `batch` queries at a time, cycling through `queries`, for >= `seconds`."""
    if len(queries) < batch:  # fewer queries than a batch: repeat them
        queries = np.resize(queries, (batch, queries.shape[1]))
    batches = [queries[i : i + batch] for i in range(0, len(queries) - batch + 1, batch)]
    search(batches[0])  # warm-up
    done, i, start = 0, 0, time.perf_counter()
    while True:
        search(batches[i % len(batches)])
        done += batch
        i += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and i >= 3:
            return done / elapsed


def recall_at_k(labels: np.ndarray, truth: np.ndarray) -> float:
    """labels, truth [q, k] int -> the mean share of the true top k that was found."""
    found = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(labels, truth, strict=True))
    return found / truth.size


def _fill(
    store: CollectionStore, name: str, spec: IndexSpec, base: np.ndarray, batch: int = 10_000
) -> float:
    """A new collection holding `base` (ids "0".."n-1") -> added vectors/s."""
    store.create(name, MODEL_ID, base.shape[1], spec)
    col = store.get(name)
    start = time.perf_counter()
    for s in range(0, len(base), batch):
        e = min(len(base), s + batch)
        col.upsert([str(i) for i in range(s, e)], base[s:e], [{"i": i} for i in range(s, e)])
    return len(base) / (time.perf_counter() - start)


def _labels(hits: list[list[Any]], k: int) -> np.ndarray:
    out = np.full((len(hits), k), -1, np.int64)
    for q, row in enumerate(hits):
        out[q, : len(row)] = [int(h.id) for h in row]
    return out


def _index_params(col: Any) -> dict[str, Any]:
    """What the collection's FAISS index was built with (for the record)."""
    index = getattr(getattr(col, "_index", None), "index", None)
    out: dict[str, Any] = {"active_index": col.info().active_index}
    if index is not None and hasattr(index, "nlist"):
        out.update(nlist=int(index.nlist), nprobe=int(index.nprobe))
    return out


# -- HTTP ---------------------------------------------------------------------------------
def _start_server(args: argparse.Namespace, port: int, folder: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "contrastkit.service", "serve", "--model", args.model]
    cmd += ["--device", args.device, "--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "CONTRASTIVE_API_KEYS": "", "CONTRASTIVE_COLLECTIONS_DIR": str(folder)}
    return wait_ready(subprocess.Popen(cmd, env=env), port, 600)


def _search_request(port: int, queries: np.ndarray, k: int) -> bytes:
    body = json.dumps({"queries": [{"vector": q.tolist()} for q in queries], "k": k}).encode()
    path = f"/v1/collections/{NAME}/search"
    return build_request("127.0.0.1", port, path, body, "application/json", None)


def http_queries_per_s(
    port: int, queries: np.ndarray, k: int, batch: int, seconds: float
) -> dict[str, Any]:
    """One connection sending the same search request back to back -> queries/s."""
    import httpx

    if len(queries) < batch:
        queries = np.resize(queries, (batch, queries.shape[1]))
    body = {"queries": [{"vector": q.tolist()} for q in queries[:batch]], "k": k}
    check = httpx.post(
        f"http://127.0.0.1:{port}/v1/collections/{NAME}/search", json=body, timeout=120
    )
    if check.status_code != 200:
        raise RuntimeError(f"search answered {check.status_code}: {check.text[:300]}")
    res = asyncio.run(
        run_load("127.0.0.1", port, _search_request(port, queries[:batch], k), 1, seconds)
    )
    return {
        "queries_per_s": res.rps * batch,
        "p50_ms": 1000 * res.percentile(50),
        "p99_ms": 1000 * res.percentile(99),
        "errors": res.errors,
    }


# -- the run ------------------------------------------------------------------------------
def _resolve(args: argparse.Namespace) -> tuple[str, int, int]:
    from contrastkit.training.encoders.base import resolve_device

    device = str(resolve_device(args.device))
    gpu = device.startswith("cuda")
    n = args.n or (20_000 if args.quick else 1_000_000 if gpu else 200_000)
    dim = args.dim or (512 if gpu else 384)
    return device, n, dim


def run(args: argparse.Namespace) -> int:
    import faiss

    device, n, dim = _resolve(args)
    seconds = min(args.seconds, 1.0) if args.quick else args.seconds
    add_n = min(args.add_n, 5_000) if args.quick else args.add_n
    k = args.k
    print(f"{n} x {dim} {args.data} vectors, {args.queries} queries, k={k}, {device}", flush=True)
    base, queries = make_data(n, args.queries, dim, args.data)
    env = environment(device)
    tmp = Path(tempfile.mkdtemp(prefix="bench-search-"))
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "benchmark": "search",
        **env,
        "n": n,
        "dim": dim,
        "k": k,
        "queries": args.queries,
        "data": args.data,
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
    }
    try:
        # 1. raw FAISS
        raw = faiss.IndexFlatIP(dim)
        raw.add(base)
        _, truth = raw.search(queries, k)
        ref = {b: queries_per_s(lambda x: raw.search(x, k), queries, b, seconds) for b in BATCHES}
        for b in BATCHES:
            rows.append(_row("raw FAISS IndexFlatIP", b, ref[b], ref[b], 1.0))
            _print_row(rows[-1])

        # 2. our collection in-process (flat), built and closed for the server
        folder = tmp / "collections"
        store = CollectionStore(folder, device=device)
        print("building the flat collection ...", flush=True)
        _fill(store, NAME, IndexSpec(kind="flat"), base)
        col = store.get(NAME)
        col.snapshot()  # the server opens the snapshot, not a long log
        flat = ("Collection flat, in-process", "Collection flat, reopened")
        rows += _flat_rows(col, flat[0], queries, truth, k, seconds, ref)
        store.close()
        store = CollectionStore(folder, device=device)  # what a restart serves: the snapshot
        rows += _flat_rows(store.get(NAME), flat[1], queries, truth, k, seconds, ref)
        store.close()

        # 3. HTTP
        if not args.no_http:
            rows += _http_rows(args, folder, queries, k, seconds, ref)

        # 5. approximate indexes at their defaults
        store = CollectionStore(tmp / "approx", device=device)
        approx: dict[str, Any] = {}
        for kind in APPROX:
            print(f"building the {kind} collection ...", flush=True)
            add_rate = _fill(store, kind, IndexSpec(kind=kind), base)
            rows += _approx_rows(
                store.get(kind),
                f"Collection {kind}",
                queries,
                truth,
                k,
                seconds,
                ref,
                approx,
                add_rate,
            )
        store.close()
        if not args.no_reopen:
            print("reopening the ivf collection (IVF retrained for the final count) ...")
            t0 = time.perf_counter()
            store = CollectionStore(tmp / "approx", device=device)
            approx["ivf_reopen_s"] = time.perf_counter() - t0
            rows += _approx_rows(
                store.get("ivf"),
                "Collection ivf, reopened",
                queries,
                truth,
                k,
                seconds,
                ref,
                approx,
                None,
            )
            store.close()
        shutil.rmtree(tmp / "approx", ignore_errors=True)
        result["approx_index"] = approx

        # 6. durable adds: upserts of 1,000, each one fsynced before it returns
        adds = []
        for kind in ADD_KINDS:
            store = CollectionStore(tmp / f"add-{kind}", device=device)
            rate = _fill(store, "add", IndexSpec(kind=kind), base[:add_n], batch=1000)
            store.close()
            adds.append({"kind": kind, "vectors": add_n, "batch": 1000, "vectors_per_s": rate})
            print(f"  add {kind}: {rate:,.0f} vectors/s (batches of 1000, fsynced)", flush=True)
        result["add"] = adds

        # 7. scale
        if not args.no_scale:
            result["scale"] = _scale(args, tmp, base, queries, k, seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["search"] = rows
    path = write_result(args.out, "search", result)
    _print_summary(result)
    print(f"wrote {path}")
    return 0


def _scale(
    args: argparse.Namespace,
    tmp: Path,
    base: np.ndarray,
    queries: np.ndarray,
    k: int,
    seconds: float,
) -> dict[str, Any]:
    from contrastkit.service.bench import search_scale

    small = min(10_000, len(base))
    out: dict[str, Any] = {
        "restart": search_scale.restart_rows(tmp, base),
        "upsert_cost": search_scale.upsert_cost(tmp, base, small),
        "filtered": search_scale.filtered_rows(tmp, base, queries, k, seconds),
    }
    backend_n = min(args.backend_n, len(base))
    if backend_n:
        from contrastkit.service.bench.backends import bench_backends

        print(f"Qdrant against FAISS on {backend_n:,} vectors ...", flush=True)
        out["backends"] = bench_backends(backend_n, base.shape[1], qdrant_url=args.qdrant_url)
        for key, ratio in out["backends"]["qdrant_over_faiss"].items():
            print(f"  qdrant / faiss {key}: {ratio:.1f}x", flush=True)
    return out


def _http_rows(
    args: argparse.Namespace,
    folder: Path,
    queries: np.ndarray,
    k: int,
    seconds: float,
    ref: dict[int, float],
) -> list[dict[str, Any]]:
    port = free_port()
    print("starting the server ...", flush=True)
    server = _start_server(args, port, folder)
    rows = []
    try:
        for b in BATCHES:
            res = http_queries_per_s(port, queries, k, b, seconds)
            row = _row("HTTP search, 1 connection", b, res["queries_per_s"], ref[b], 1.0)
            row.update(p50_ms=res["p50_ms"], p99_ms=res["p99_ms"], errors=res["errors"])
            row.pop("recall")  # the same collection as in-process: see that row
            rows.append(row)
            _print_row(row)
    finally:
        server.terminate()
        server.wait(60)
    return rows


def _approx_rows(
    col: Any,
    label: str,
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    seconds: float,
    ref: dict[int, float],
    approx: dict[str, Any],
    add_rate: float | None,
) -> list[dict[str, Any]]:
    recall = recall_at_k(_labels(col.search(queries, k), k), truth)
    params = _index_params(col)
    approx[label] = {**params, "recall": recall, "added_vectors_per_s": add_rate}
    rows = []
    for b in BATCHES:
        qps = queries_per_s(lambda x: col.search(x, k), queries, b, seconds)
        rows.append({**_row(label, b, qps, ref[b], recall), **params})
        _print_row(rows[-1])
    return rows


def _flat_rows(
    col: Any,
    path: str,
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    seconds: float,
    ref: dict[int, float],
) -> list[dict[str, Any]]:
    """A flat collection's queries/s at each batch size against raw FAISS's, and its
    recall@k against FAISS's hits (`truth`; exact search: 1.0 but for ties)."""
    recall = recall_at_k(_labels(col.search(queries, k), k), truth)
    rows = []
    for b in BATCHES:
        qps = queries_per_s(lambda x: col.search(x, k), queries, b, seconds)
        rows.append(_row(path, b, qps, ref[b], recall))
        _print_row(rows[-1])
    return rows


def _row(path: str, batch: int, qps: float, raw: float, recall: float) -> dict[str, Any]:
    return {
        "path": path,
        "batch": batch,
        "queries_per_s": qps,
        "ratio_to_raw": qps / raw,
        "recall": recall,
    }


def _print_row(r: dict[str, Any]) -> None:
    recall = f"  recall@k {r['recall']:.4f}" if "recall" in r else ""
    print(
        f"  {r['path']:32} batch {r['batch']:<4} {r['queries_per_s']:10,.1f} q/s  "
        f"x{r['ratio_to_raw']:.3f} of raw{recall}",
        flush=True,
    )


def _print_summary(result: dict[str, Any]) -> None:
    cols = ["path", "batch", "queries/s", "/ raw FAISS", "recall@k", "p50 ms"]
    print(
        f"\n{result['n']:,} x {result['dim']} {result['data']} vectors, k={result['k']}, "
        f"{result['device_name']} ({result['cpu_count']} CPUs)"
    )
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in result["search"]:
        cells = [
            r["path"] + (f" (nlist {r['nlist']})" if "nlist" in r else ""),
            r["batch"],
            f"{r['queries_per_s']:,.1f}",
            f"{r['ratio_to_raw']:.3f}",
            f"{r['recall']:.4f}" if "recall" in r else "(as in-process)",
            f"{r['p50_ms']:.2f}" if "p50_ms" in r else "",
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    for a in result.get("add", []):
        print(
            f"add, {a['kind']}, durable: {a['vectors_per_s']:,.0f} vectors/s "
            f"(upserts of {a['batch']}, each fsynced; {a['vectors']:,} vectors)"
        )
    for label, a in result.get("approx_index", {}).items():
        if isinstance(a, dict) and a.get("added_vectors_per_s"):
            print(f"build, {label}: {a['added_vectors_per_s']:,.0f} vectors/s (upserts of 10,000)")
    if "ivf_reopen_s" in result.get("approx_index", {}):
        print(f"reopen of the ivf collection: {result['approx_index']['ivf_reopen_s']:.1f} s")
