"""Everything the running service holds: settings, the encoder and its embedders (each
with a batcher), the collection store, thread pools.

Created in the app's lifespan and kept on `app.state.service`; routes reach it via
`service.api.deps`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image

from service.domain_errors import ModelError
from service.index.backend import CollectionBackend, open_backend
from service.metrics import Metrics
from service.runtime.batcher import Batcher
from service.runtime.device_decode import DevicePixels
from service.runtime.embedding import ImageEmbedder, TextEmbedder
from service.runtime.zeroshot import ClassifierCache
from service.settings import Settings
from training.encoders import IMAGE, TEXT, Encoder, load_encoder, resolve_device

log = logging.getLogger("contrastive.service")
T = TypeVar("T")


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    encoder: Encoder | None = None
    load_error: str | None = None
    draining: bool = False
    # set with `encoder`, once it is warm (routes reach them through service.api.deps)
    images: ImageEmbedder | None = None
    texts: TextEmbedder | None = None
    classifiers: ClassifierCache | None = None
    # One model thread: torch parallelises inside an op; two would only fight over cores.
    model_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="model")
    )
    decode_threads: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))
    decode_pool: ThreadPoolExecutor = field(init=False)

    store: CollectionBackend | None = None
    # Index writes block on fsync: they get threads of their own, off the event loop.
    index_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(4, thread_name_prefix="index")
    )

    def __post_init__(self) -> None:
        self.decode_pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")

    @property
    def max_decoding(self) -> int:
        """Images handed to the decode pool at most (more get 503 at once): two per thread
        keep every thread busy; at least one full request, so that one always fits."""
        return max(2 * self.decode_threads, self.settings.max_images)

    def open_store(self) -> None:
        """Open (and recover) every collection; runs once at start-up, in a thread.
        A replica with `collections` off opens nothing (its collection routes answer 404)."""
        if not self.settings.collections:
            return
        self.store = open_collections(self.settings)

    async def run_index(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call in the index pool."""
        return await asyncio.get_running_loop().run_in_executor(self.index_pool, fn, *args)

    @property
    def ready(self) -> bool:
        return self.encoder is not None and not self.draining

    # -- lifecycle ------------------------------------------------------------------
    async def load(self, encoder: Encoder | None = None) -> None:
        """Load (unless given) and warm the encoder, then start the batchers."""
        loop = asyncio.get_running_loop()
        s = self.settings
        try:
            if encoder is None:
                encoder = await loop.run_in_executor(
                    self.model_pool, load_encoder, s.model, s.pretrained, s.device, s.runtime
                )
            await loop.run_in_executor(self.model_pool, _warm_up, encoder)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("model %r failed to load: %s", s.model, self.load_error)
            return
        on_device = s.device_decode == "on" or (
            s.device_decode == "auto" and encoder.device.type == "cuda"
        )
        self.images = ImageEmbedder(
            encoder,
            self._batcher(_image_batch(encoder, on_device, s.max_image_pixels), IMAGE),
            self.decode_pool,
            s.max_image_pixels,
            self.max_decoding,
            device_decode=on_device,
        )
        if on_device:
            log.info("JPEG uploads are decoded on %s", encoder.device)
        self.texts = TextEmbedder(self._batcher(encoder.encode_texts, TEXT))
        self.classifiers = ClassifierCache(self.texts, s.classifier_cache)
        self.encoder = encoder
        log.info("model ready: %s (%d-d, %s)", encoder.model_id, encoder.embed_dim, encoder.device)

    def _batcher(self, fn: object, modality: str) -> Batcher:  # type: ignore[type-arg]
        s = self.settings
        b: Batcher = Batcher(  # type: ignore[type-arg]
            fn,  # type: ignore[arg-type]
            self.model_pool,
            s.max_batch_size,
            s.max_wait_ms,
            s.max_queue,
            s.max_queue_wait_ms,
            on_batch=self.metrics.batch_size.labels(modality).observe,
        )
        self.metrics.queue_depth.labels(modality).set_function(lambda: b.pending)
        b.start()
        return b

    async def close(self) -> None:
        for embedder in (self.images, self.texts):
            if embedder:
                await embedder.batcher.stop()
        # off the event loop: first every index call still running ends (one cancelled by
        # the graceful timeout may still be writing), then the store closes, alone
        await asyncio.get_running_loop().run_in_executor(None, self._close_store)
        self.model_pool.shutdown(wait=False, cancel_futures=True)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    def _close_store(self) -> None:
        self.index_pool.shutdown(wait=True)
        if self.store is not None:
            self.store.close()
            log.info("collections closed")

    # -- used by the routes (through service.api.deps) -----------------------------
    def require_encoder(self) -> Encoder:
        """The loaded encoder, or ModelError `model_not_ready` (retry in a few seconds)."""
        if self.encoder is None:
            msg = "the model is still loading" if self.load_error is None else self.load_error
            raise ModelError("model_not_ready", msg, retry_after=5)
        return self.encoder


def open_collections(s: Settings) -> CollectionBackend:
    """The collection backend the settings name: FAISS in collections_dir, or Qdrant at
    qdrant_url (without one, qdrant-client's local mode in collections_dir/qdrant)."""
    root = Path(s.collections_dir)
    qdrant = None
    if s.collections_backend == "qdrant":
        from service.index.qdrant_backend import QdrantConfig

        qdrant = QdrantConfig(
            url=s.qdrant_url,
            api_key=s.qdrant_api_key,
            path=None if s.qdrant_url else root / "qdrant",
            timeout=s.qdrant_timeout,
            prefix=s.qdrant_prefix,
        )
        log.info("collections: Qdrant, %s", qdrant.where)
    device = str(resolve_device(s.device))
    return open_backend(s.collections_backend, root, qdrant, s.snapshot_every, device)


def _image_batch(
    encoder: Encoder, on_device: bool, max_pixels: int
) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """The image batcher's function: prepared uint8 [3, S, S] items -> [n, d]; with
    device decoding, some items are JPEG files that it decodes first (DevicePixels)."""
    if on_device:
        return DevicePixels(encoder, max_pixels)

    def run(items: list[torch.Tensor]) -> torch.Tensor:
        return encoder.encode_image_tensors(torch.stack(items))

    return run


def _warm_up(encoder: Encoder) -> None:
    """One forward per modality, so the first request pays no lazy initialisation."""
    size = encoder.info.preprocess.size
    encoder.encode_images([Image.new("RGB", (size, size), (127, 127, 127))])
    if TEXT in encoder.capabilities:
        encoder.encode_texts(["warm up"])
