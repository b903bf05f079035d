"""`contrastive bench serve --peer URL`: our server against another embedding server,
counting what users get.

Both get the same OpenAI `/v1/embeddings` requests from the same closed-loop load
generator (contrastkit.service.bench.loadgen: c connections, each sending its next request when the
last is answered, refusals retried at once as impatient clients do). A cell is one
workload (text or image, 1 or 32 items a request) at one concurrency; each cell is run
`rounds` times, the two servers alternating which goes first, because on a shared machine
a ratio is fair only between figures taken side by side. Counted for each server:
answered requests per second (200s only), p50 and p99 of the answered requests, and how
many were refused (503) or failed otherwise; and the machine's load average around each
cell, since a busy machine changes the ratio.

Images are sent as OpenAI-style strings with `"modality": "image"`, each a
`data:image/jpeg;base64,...` URL of a 640x480 photo, the shape both this service and
infinity-emb accept.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from contrastkit.service.bench.loadgen import LoadResult, build_request, run_load

TEXT = "a photo of a cat sitting on a wooden table"
IMAGE, TEXT_KIND = "image", "text"


@dataclass(frozen=True)
class Workload:
    """What one request carries: `items` texts, or `items` images."""

    modality: str
    items: int

    @property
    def name(self) -> str:
        return f"{self.modality} x{self.items}"

    def body(self, model: str, jpeg: bytes) -> dict[str, Any]:
        if self.modality == TEXT_KIND:
            return {"model": model, "input": [TEXT] * self.items}
        uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        return {"model": model, "input": [uri] * self.items, "modality": "image"}


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible embeddings API, POST http://host:port{prefix}/embeddings, and
    the model name it is sent for each modality."""

    host: str
    port: int
    prefix: str
    models: dict[str, str]

    @classmethod
    def from_url(cls, url: str, models: dict[str, str]) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--peer needs an http://host:port[/prefix] URL, got {url!r}")
        return cls(parts.hostname, parts.port or 80, parts.path.rstrip("/"), models)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.prefix}"

    def request(self, work: Workload, jpeg: bytes) -> bytes:
        """The raw HTTP request of one `work` request, built once for the load generator."""
        body = json.dumps(work.body(self.models[work.modality], jpeg)).encode()
        path = f"{self.prefix}/embeddings"
        return build_request(self.host, self.port, path, body, "application/json", None)

    def check(self, work: Workload, jpeg: bytes) -> int:
        """One real request, its answer checked -> the embedding's length."""
        import httpx

        body = work.body(self.models[work.modality], jpeg)
        r = httpx.post(f"{self.url}/embeddings", json=body, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"{self.url}: {work.name} answered {r.status_code}: {r.text[:300]}")
        data = r.json()["data"]
        if len(data) != work.items:
            raise RuntimeError(f"{self.url}: {len(data)} embeddings for {work.items} inputs")
        return len(data[0]["embedding"])


def peer_model(url: str) -> str:
    """The first model id the peer lists at GET {url}/models (OpenAI's shape)."""
    import httpx

    r = httpx.get(f"{url.rstrip('/')}/models", timeout=30)
    r.raise_for_status()
    return str(r.json()["data"][0]["id"])


def side_stats(res: LoadResult) -> dict[str, Any]:
    """One server's figures in one round of one cell."""
    return {
        "answered_per_s": res.rps,
        "p50_ms": 1000 * res.percentile(50),
        "p99_ms": 1000 * res.percentile(99),
        "refused_503": res.errors.get(503, 0),
        "other_errors": {str(k): v for k, v in res.errors.items() if k != 503},
    }


def summarize(cell: dict[str, Any]) -> dict[str, Any]:
    """A cell's rounds -> the medians of each side, every round's ratio, their minimum."""
    ratios = []
    for r in cell["rounds"]:
        peer = r["peer"]["answered_per_s"]
        ratios.append(r["ours"]["answered_per_s"] / peer if peer else float("inf"))
    out: dict[str, Any] = {"ratios": ratios, "ratio_min": min(ratios)}
    out["ratio_median"] = statistics.median(ratios)
    for side in ("ours", "peer"):
        rounds = [r[side] for r in cell["rounds"]]
        out[side] = {
            "answered_per_s": statistics.median(x["answered_per_s"] for x in rounds),
            "p50_ms": statistics.median(x["p50_ms"] for x in rounds),
            "p99_ms": statistics.median(x["p99_ms"] for x in rounds),
            "refused_503": sum(x["refused_503"] for x in rounds),
        }
    return out


def compare(
    ours: Endpoint,
    peer: Endpoint,
    workloads: list[Workload],
    levels: list[int],
    seconds: float,
    rounds: int,
    jpeg: bytes,
    warmup: float = 1.0,
) -> list[dict[str, Any]]:
    """Every (workload, concurrency) cell, `rounds` times, the servers alternating which
    goes first -> one dict per cell, its rounds and their summary."""
    grid = [(w, c) for w in workloads for c in levels]
    cells: list[dict[str, Any]] = [
        {"workload": w.name, "concurrency": c, "rounds": []} for w, c in grid
    ]
    sides = {"ours": ours, "peer": peer}
    for k in range(rounds):
        order = ("ours", "peer") if k % 2 == 0 else ("peer", "ours")
        for cell, (w, c) in zip(cells, grid, strict=True):
            measured: dict[str, Any] = {"first": order[0], "load_before": os.getloadavg()[0]}
            for name in order:
                ep = sides[name]
                load = run_load(ep.host, ep.port, ep.request(w, jpeg), c, seconds, warmup)
                measured[name] = side_stats(asyncio.run(load))
            measured["load_after"] = os.getloadavg()[0]
            cell["rounds"].append(measured)
            _print_round(cell, k)
    for cell in cells:
        cell["summary"] = summarize(cell)
    return cells


def _print_round(cell: dict[str, Any], k: int) -> None:
    r = cell["rounds"][-1]
    line = [f"  round {k + 1} {cell['workload']:<9} c={cell['concurrency']:<3}"]
    for name in ("ours", "peer"):
        s = r[name]
        line.append(
            f"{name} {s['answered_per_s']:7.1f}/s p50 {s['p50_ms']:7.1f} p99 {s['p99_ms']:7.1f} "
            f"503s {s['refused_503']}"
        )
    line.append(f"load {r['load_before']:.1f}->{r['load_after']:.1f}")
    print("  ".join(line), flush=True)


def print_table(cells: list[dict[str, Any]]) -> None:
    """The summary as a Markdown table (medians over rounds; the ratio's minimum too)."""
    cols = ["workload", "c", "ours req/s", "ours p50 / p99 ms", "ours 503s", "peer req/s"]
    cols += ["peer p50 / p99 ms", "peer 503s", "ours / peer (median, min)"]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for cell in cells:
        s = cell["summary"]
        o, q = s["ours"], s["peer"]
        row = [cell["workload"], str(cell["concurrency"])]
        row += [f"{o['answered_per_s']:.1f}", f"{o['p50_ms']:.0f} / {o['p99_ms']:.0f}"]
        row += [str(o["refused_503"]), f"{q['answered_per_s']:.1f}"]
        row += [f"{q['p50_ms']:.0f} / {q['p99_ms']:.0f}", str(q["refused_503"])]
        row.append(f"**{s['ratio_median']:.2f}** ({s['ratio_min']:.2f})")
        print("| " + " | ".join(row) + " |")


def _workloads(args: argparse.Namespace, peer_models: dict[str, str]) -> list[Workload]:
    kinds = [m.strip() for m in args.modalities.split(",") if m.strip()]
    items = [int(n) for n in args.items.split(",")]
    out = []
    for kind in (TEXT_KIND, IMAGE):
        if kind not in kinds:
            continue
        if kind not in peer_models:
            print(f"no {kind} model named for the peer (--peer-{kind}-model): {kind} left out")
            continue
        out += [Workload(kind, n) for n in items]
    return out


def run(args: argparse.Namespace) -> int:
    """Start ours (unless --ours names a running server), check both answer every workload
    with vectors of one size, then measure; write the JSON and print the table."""
    from contrastkit.service.bench.serve import (
        environment,
        free_port,
        photo_jpeg,
        start_server,
        write_result,
    )
    from contrastkit.training.encoders.base import resolve_device

    peer_models = {TEXT_KIND: args.peer_model or peer_model(args.peer)}
    if args.peer_image_model:
        peer_models[IMAGE] = args.peer_image_model
    peer = Endpoint.from_url(args.peer, peer_models)
    workloads = _workloads(args, peer_models)
    levels = [int(c) for c in args.concurrency.split(",")]
    jpeg = photo_jpeg()
    env = environment(str(resolve_device(args.device)))
    server = None
    if args.ours:
        models = {TEXT_KIND: args.model, IMAGE: args.ours_image_model or args.model}
        ours = Endpoint.from_url(args.ours, {k: models[k] for k in peer_models})
    else:
        port = free_port()
        print("starting our server ...", flush=True)
        server = start_server(args, port)
        ours = Endpoint("127.0.0.1", port, "/v1", dict.fromkeys(peer_models, args.model))
    try:
        dims = {}
        for w in workloads:
            dims[w.name] = {"ours": ours.check(w, jpeg), "peer": peer.check(w, jpeg)}
            if dims[w.name]["ours"] != dims[w.name]["peer"]:
                print(f"warning: {w.name}: ours embeds into {dims[w.name]}")
        cells = compare(ours, peer, workloads, levels, args.seconds, args.rounds, jpeg, args.warmup)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    result = {
        "benchmark": "serve-peer",
        "ours": {"url": ours.url, "models": ours.models, "batch": args.batch},
        "peer": {"url": peer.url, "models": peer.models},
        "dims": dims,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "rounds": args.rounds,
        **env,
        "cells": cells,
    }
    path = write_result(args.out, "serve-peer", result)
    print_table(cells)
    print(f"wrote {path}")
    return 0
