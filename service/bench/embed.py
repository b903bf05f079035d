"""`contrastive bench embed`: the embed job end to end against the encoder alone.

In one run, on the same image files and the same loaded model:
1. reference: the encoder's batched throughput on tensors decoded beforehand
   (encode_image_tensors on uint8 [batch, 3, S, S]), images/s; measured before and after
   the job, and averaged, so that a busy machine's drift falls on both sides;
2. the job: `contrastive embed`'s pipeline (read, decode and preprocess in the thread
   pool, embed, write parquet parts) over the files, images/s;
3. the ratio job / reference: what decoding and writing cost the model (goal >= 0.9).

Without --images, N Fashion-MNIST test images are written as PNG and JPEG files first.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path
from typing import Any

FASHION = "/usr/share/datasets/fashion-mnist"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", default=None, help="a folder of images [Fashion-MNIST files]")
    p.add_argument("--n", type=int, default=500, help="Fashion-MNIST images to write [500]")
    p.add_argument("--model", default="builtin", help="model reference [builtin]")
    p.add_argument("--device", default=None, help="auto (CUDA when present), cpu, ...")
    p.add_argument("--batch", type=int, default=None, help="[64 on the CPU, 256 on CUDA]")
    p.add_argument("--workers", type=int, default=None, help="decode threads [CPUs, <= 8]")
    p.add_argument("--out", default="bench-results", help="folder for the JSON result")


def write_fashion(folder: Path, n: int) -> Path:
    """The first n Fashion-MNIST test images as files, PNG and JPEG alternately."""
    from PIL import Image

    from contrastkit.training.data.idx import find_idx, read_idx

    images = read_idx(str(find_idx(Path(FASHION), "t10k", "images-idx3")))[:n]
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images.reshape(len(images), 28, 28)):
        Image.fromarray(pixels).save(folder / f"{i:05d}.{'png' if i % 2 else 'jpg'}")
    return folder


def reference(encoder: Any, pixels: Any, batch: int) -> float:
    """Images/s of encode_image_tensors over uint8 [n, 3, S, S], `batch` at a time."""
    start = time.perf_counter()
    for chunk in pixels.split(batch):
        encoder.encode_image_tensors(chunk)
    return len(pixels) / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `contrastive embed` runs
    import torch

    from contrastkit.service.bench.serve import environment, write_result
    from contrastkit.service.commands.embed.job import Decoded, Job, Options, prepare
    from contrastkit.service.commands.embed.parquet import PartWriter
    from contrastkit.service.commands.embed.sources import list_input
    from contrastkit.training.encoders import load_encoder

    encoder = load_encoder(args.model, device=args.device)
    batch = args.batch or (256 if encoder.device.type == "cuda" else 64)
    workers = args.workers or min(8, os.cpu_count() or 1)
    # as `contrastive embed` runs by default: plain JPEGs decoded on the GPU when there is one
    options = Options(batch=batch, workers=workers, device_decode=encoder.device.type == "cuda")
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        folder = Path(args.images) if args.images else write_fashion(Path(tmp) / "images", args.n)
        items = list_input(str(folder), "folder", {}).items
        ready = [prepare(i, encoder, options.max_pixels) for i in items]
        pixels = torch.stack([d.pixels for d in ready if isinstance(d, Decoded)])
        reference(encoder, pixels[:batch], batch)  # warm-up: first-call allocations
        before = reference(encoder, pixels, batch)
        job = Job(
            encoder, PartWriter(Path(tmp) / "out", encoder.model_id, encoder.embed_dim), options
        )
        job.run(items)
        after = reference(encoder, pixels, batch)
    ref = (before + after) / 2
    end_to_end = job.embedded / job.seconds
    result = {
        "date": datetime.datetime.now().isoformat(),
        "images": len(pixels),
        "model": encoder.model_id,
        "batch": batch,
        "workers": options.workers,
        "device_decode": options.device_decode,
        "reference_images_per_s": round(ref, 2),
        "reference_before_after": [round(before, 2), round(after, 2)],
        "job_images_per_s": round(end_to_end, 2),
        "ratio": round(end_to_end / ref, 3),
        "environment": environment(str(encoder.device)),
    }
    print(
        f"bench embed: {len(pixels)} images, {encoder.model_id}, batch {batch}, "
        f"{options.workers} decode threads\n"
        f"  encoder on pre-decoded tensors: {ref:.1f} images/s "
        f"(before {before:.1f}, after {after:.1f})\n"
        f"  embed job end to end:           {end_to_end:.1f} images/s\n"
        f"  ratio: {end_to_end / ref:.3f}"
    )
    print(f"wrote {write_result(args.out, 'embed', result)}")
    return 0
