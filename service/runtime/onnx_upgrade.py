"""`runtime=auto` on the CPU: a torch model serves at once, then moves to onnxruntime.

After a model is warm (at start-up or loaded by the admin API), when it runs on the CPU
with torch, `runtime` is `auto`, `auto_onnx` is on and onnxruntime is installed, the
load thread traces the served encoder's graphs (or finds them in the cache:
contrastkit.training.export.onnx_cache) and the lifecycle swaps the onnxruntime encoder in,
as a replacement: requests queued on the torch encoder finish on it, new ones go to the
graphs. The model keeps its id, names and collections; its vectors stay the torch
encoder's to 1e-4 (checked on every open).

Why in the background: tracing ViT-B/32 takes about a minute on 2 cores; the server
answers on torch meanwhile rather than starting a minute later. Why at all: on the CPU,
onnxruntime ran the built-in model's image tower 2.3-3.1x and its text tower 1.4-2.8x
faster than torch at batch 1-32 (`contrastive bench onnx`, docs/benchmarks.md).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import time
from pathlib import Path

from contrastkit.service.settings import Settings
from contrastkit.training.encoders import Encoder

log = logging.getLogger("contrastive.service")
_NEEDS = ("onnxruntime", "onnxscript", "onnx")  # the `onnx` extra: run, and trace, graphs


def wants_onnx(encoder: Encoder, settings: Settings, runtime: str | None) -> bool:
    """Whether a warm `encoder` served with `runtime` (None: the setting) moves to ONNX."""
    return (
        settings.auto_onnx
        and (runtime or settings.runtime) == "auto"
        and encoder.device.type == "cpu"
        and getattr(encoder, "runtime", "torch") == "torch"
        and all(importlib.util.find_spec(m) is not None for m in _NEEDS)
    )


def cache_dir(settings: Settings) -> Path:
    """The `onnx_cache_dir` setting, or the default cache folder."""
    from contrastkit.training.export.onnx_cache import default_cache_dir

    return Path(settings.onnx_cache_dir) if settings.onnx_cache_dir else default_cache_dir()


def onnx_twin(encoder: Encoder, folder: Path) -> Encoder:
    """The encoder's graphs, cached or traced now (blocking: run it in the load thread)."""
    from contrastkit.training.export.onnx_cache import cached_onnx

    started = time.monotonic()
    log.info("model %s: preparing its ONNX graphs in %s…", encoder.model_id, folder)
    # A copy: torch.export swaps a module's parameters for fake tensors while it traces,
    # and the model thread is answering requests with this very encoder meanwhile.
    twin = cached_onnx(copy.deepcopy(encoder), folder)
    log.info("model %s: ONNX graphs ready in %.1f s", encoder.model_id, time.monotonic() - started)
    return twin
