"""`contrastive bench serve`: the service's HTTP throughput against the model's own.

In one run on one machine:
1. in-process: the encoder alone, batched, on ready inputs (preprocessed image tensors,
   raw strings) -> items/s, and its time for a single item;
2. HTTP: a server process on loopback, single-image (multipart JPEG) and single-text
   requests at each concurrency -> requests/s, p50 and p99 latency;
3. the ratios HTTP / in-process, and p50 at concurrency 1 minus the single-item time.

With `--peer URL` it measures against another embedding server instead
(contrastkit.service.bench.peer: the same OpenAI /v1/embeddings requests to both, texts and images,
1 and 32 items a request, alternating over rounds -> answered requests/s, p50/p99 and 503s of each).
The peer runs the same model and is started by the user (e.g. infinity-emb, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from contrastkit.service.bench import flags
from contrastkit.service.bench.loadgen import LoadResult, build_request, run_load

# its flags live in contrastkit.service.bench.flags, which `--help` imports without torch
add_arguments = flags.serve


def photo_jpeg() -> bytes:
    """A real photo at a camera's VGA size (scikit-image's cat, resized to 640x480 JPEG):
    the upload the issue's decode target is stated for."""
    from PIL import Image

    try:
        import skimage.data

        img = Image.fromarray(skimage.data.chelsea()).resize((640, 480), Image.Resampling.BICUBIC)
    except ImportError:  # scikit-image is a dev extra; fall back to a synthetic gradient
        img = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


TEXT = "a photo of a cat sitting on a wooden table"


def _median_time(fn: Any, repeats: int, min_seconds: float = 1.0) -> float:
    """Median wall time of fn(): at least `repeats` calls and `min_seconds` in all."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _runner(encoder: Any, modality: str, jpeg: bytes, batch: int) -> Any:
    """A no-argument callable that embeds `batch` ready inputs of `modality`."""
    from PIL import Image

    if modality == "image":
        x = encoder.preprocess_image(Image.open(io.BytesIO(jpeg)))
        pixels = x.expand(batch, *x.shape).contiguous()
        return lambda: encoder.encode_image_tensors(pixels)
    texts = [f"{TEXT} {i}" for i in range(batch)]
    return lambda: encoder.encode_texts(texts)


def throughput(encoder: Any, modality: str, jpeg: bytes, batch: int) -> float:
    """items/s of the model alone at one batch size (median over >= 1 s)."""
    fn = _runner(encoder, modality, jpeg, batch)
    fn()
    return batch / _median_time(fn, 3)


def in_process(encoder: Any, modality: str, max_batch: int, jpeg: bytes) -> dict[str, Any]:
    """The model alone on ready inputs (uint8 image tensors after preprocessing, strings).

    -> {"best_batch", "by_batch": {batch: items/s}, "single_ms": one item's model time}.
    """
    sizes = sorted({1, 4, 8, 16, 32, 64, max_batch} & set(range(1, max_batch + 1)))
    by_batch = {b: throughput(encoder, modality, jpeg, b) for b in sizes}
    best = max(by_batch, key=lambda b: by_batch[b])
    one = _runner(encoder, modality, jpeg, 1)
    return {"best_batch": best, "by_batch": by_batch, "single_ms": 1000 * _median_time(one, 21)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    args: argparse.Namespace, port: int, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """`contrastive serve` of args.model on `port` (more flags: `extra`), once ready."""
    cmd = [
        sys.executable,
        "-m",
        "contrastkit.service",
        "serve",
        "--model",
        args.model,
        "--device",
        args.device,
        "--port",
        str(port),
        "--max-batch-size",
        str(args.batch),
        "--log-level",
        "warning",
    ]
    if args.pretrained:
        cmd += ["--pretrained", args.pretrained]
    if getattr(args, "device_decode", None):
        cmd += ["--device-decode", args.device_decode]
    cmd += list(extra)
    proc = subprocess.Popen(cmd, env={**os.environ, "CONTRASTIVE_API_KEYS": ""})
    return wait_ready(proc, port, 300)


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float) -> subprocess.Popen[bytes]:
    """Poll /readyz until 200; kill the server and raise if it exits or takes too long."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready in {timeout:.0f} s")


def single_item_requests(port: int, jpeg: bytes) -> dict[str, bytes]:
    """modality -> the bytes of one request of one item: the JPEG as a multipart upload to
    /v1/embed/image, or one short text to /v1/embed/text."""
    boundary = "benchboundary7MA4YWxkTrZu0gW"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="cat.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpeg
        + f"\r\n--{boundary}--\r\n".encode()
    )
    text_body = json.dumps({"texts": [TEXT]}).encode()
    host = "127.0.0.1"
    return {
        "image": build_request(
            host,
            port,
            "/v1/embed/image",
            multipart,
            f"multipart/form-data; boundary={boundary}",
            None,
        ),
        "text": build_request(host, port, "/v1/embed/text", text_body, "application/json", None),
    }


def _row(modality: str, res: LoadResult, ref: dict[str, Any]) -> dict[str, Any]:
    return {
        "modality": modality,
        "concurrency": res.concurrency,
        "requests_per_s": res.rps,
        "p50_ms": 1000 * res.percentile(50),
        "p99_ms": 1000 * res.percentile(99),
        "errors": res.errors,
        "in_process_items_per_s": ref["items_per_s"],
        "ratio_http_to_in_process": res.rps / ref["items_per_s"],
        "p50_minus_model_single_ms": 1000 * res.percentile(50) - ref["single_ms"],
    }


def write_result(out: str, stem: str, result: dict[str, Any]) -> Path:
    """Write a benchmark's JSON as OUT/STEM-<its date>.json -> the path."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{result['date'][:19].replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def environment(device: str) -> dict[str, Any]:
    """The machine and software a figure was measured on (shared with `bench train`)."""
    from contrastkit.training.encoders import environment as env

    return env.environment(device)


def run(args: argparse.Namespace) -> int:
    if args.peer:
        from contrastkit.service.bench import peer

        return peer.run(args)
    from contrastkit.training.encoders import load_encoder

    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    levels = [int(c) for c in args.concurrency.split(",")]
    jpeg = photo_jpeg()
    print(f"loading {args.model} in-process ...", flush=True)
    encoder = load_encoder(args.model, args.pretrained, args.device)
    modalities = [m for m in modalities if m in encoder.capabilities]
    refs = {m: in_process(encoder, m, args.batch, jpeg) for m in modalities}
    decode = None
    if "image" in modalities:  # the decode-only row: PIL in threads vs the device path
        from contrastkit.service.bench.decode import decode_only

        decode = decode_only(encoder, jpeg, batch=args.batch)
        print(
            f"  decode only (640x480 JPEG -> model input): CPU path "
            f"{decode['cpu_images_per_s']:.0f} img/s ({decode['cpu_threads']} threads), "
            f"device path on {decode['device']} {decode['device_images_per_s']:.0f} img/s",
            flush=True,
        )
    env = environment(str(encoder.device))
    port = free_port()
    print("starting the server ...", flush=True)
    server = start_server(args, port)
    rows = []
    try:
        reqs = single_item_requests(port, jpeg)
        for m in modalities:
            best = refs[m]["best_batch"]
            for c in levels:
                # The reference is measured right before and right after each load level
                # (the server idles meanwhile) and the faster kept: on a shared, noisy
                # machine a ratio is only fair between figures taken side by side.
                before = throughput(encoder, m, jpeg, best)
                res = asyncio.run(run_load("127.0.0.1", port, reqs[m], c, args.seconds))
                ref = {**refs[m], "items_per_s": max(before, throughput(encoder, m, jpeg, best))}
                rows.append(_row(m, res, ref))
                _print_row(rows[-1])
    finally:
        server.terminate()
        server.wait(30)
    result = {
        "benchmark": "serve",
        "model": args.model,
        "batch": args.batch,
        **env,
        "in_process": refs,
        "decode_only": decode,
        "device_decode": args.device_decode or "auto",
        "http": rows,
    }
    path = write_result(args.out, "serve", result)
    _print_summary(refs, rows)
    print(f"wrote {path}")
    return 0


def _print_row(r: dict[str, Any]) -> None:
    print(
        f"  {r['modality']:5} c={r['concurrency']:<3} {r['requests_per_s']:8.1f} req/s  "
        f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
        f"ratio {r['ratio_http_to_in_process']:.2f}  errors {r['errors'] or 0}",
        flush=True,
    )


def _print_summary(refs: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    cols = [
        "modality",
        "concurrency",
        "HTTP req/s",
        "p50 ms",
        "p99 ms",
        "in-process items/s",
        "HTTP / in-process",
    ]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [
            r["modality"],
            r["concurrency"],
            f"{r['requests_per_s']:.1f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['in_process_items_per_s']:.1f}",
            f"{r['ratio_http_to_in_process']:.2f}",
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    for m, ref in refs.items():
        sweep = ", ".join(f"{b}: {v:.0f}" for b, v in ref["by_batch"].items())
        print(f"{m}: model alone, items/s by batch size: {sweep}")
        c1 = [r for r in rows if r["modality"] == m and r["concurrency"] == 1]
        extra = ""
        if c1:
            extra = f"; HTTP p50 at c=1 is {c1[0]['p50_minus_model_single_ms']:+.2f} ms above it"
        print(f"{m}: model time for one item {ref['single_ms']:.2f} ms{extra}")
