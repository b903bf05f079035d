"""Decode-only throughput: the CPU path (PIL in a thread pool, as the service's decode
pool runs it) against the device path (one batched decode_jpeg + resize on the model's
device), on the same JPEG, in the same run. Part of `contrastive bench serve`."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from contrastkit.service.runtime.device_decode import DevicePixels, as_jpeg_item
from contrastkit.service.runtime.images import decode_image


def _rate(fn: Any, items: int, min_seconds: float) -> float:
    """items/s of fn() (each call handles `items`), over at least `min_seconds`."""
    fn()  # warm-up: thread start, nvJPEG handles, cuDNN-free resize kernels
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return items * calls / (time.perf_counter() - start)


def decode_only(
    encoder: Any, jpeg: bytes, batch: int = 64, threads: int | None = None, seconds: float = 2.0
) -> dict[str, Any]:
    """-> {"cpu_images_per_s", "cpu_threads", "device_images_per_s", "device", "batch"}:
    file bytes to uint8 [3, S, S] pixels ready for the model, no model forward."""
    threads = threads or min(32, os.cpu_count() or 1)  # the service's decode pool size
    size, cfg = encoder.info.preprocess.size, encoder.info.preprocess
    pool = ThreadPoolExecutor(threads)

    def cpu() -> None:
        list(pool.map(lambda b: encoder.preprocess_image(decode_image(b, 1 << 40, size)), blobs))

    blobs = [jpeg] * batch
    items = [as_jpeg_item(jpeg) for _ in range(batch)]
    device = DevicePixels(encoder, 1 << 40)

    def on_device() -> None:
        pixels, failed = device.pixels(items)
        assert not failed and pixels.shape[-1] == cfg.size

    try:
        cpu_rate = _rate(cpu, batch, seconds)
    finally:
        pool.shutdown()
    return {
        "batch": batch,
        "cpu_threads": threads,
        "cpu_images_per_s": cpu_rate,
        "device": str(encoder.device),
        "device_images_per_s": _rate(on_device, batch, seconds),
    }
