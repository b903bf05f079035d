"""Everything the running service holds: settings, the encoder, batchers, thread pools.

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

from service.errors import ApiError
from service.index.store import CollectionStore
from service.metrics import Metrics
from service.runtime.batcher import Batcher, QueueFullError
from service.runtime.images import decode_image
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
    image_batcher: Batcher[torch.Tensor] | None = None
    text_batcher: Batcher[str] | None = None
    classifiers: ClassifierCache | None = None
    # One model thread: torch parallelises inside an op; two would only fight over cores.
    model_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="model")
    )
    decode_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(
            max(2, os.cpu_count() or 2), thread_name_prefix="decode"
        )
    )

    store: CollectionStore | None = None
    # Index writes block on fsync: they get threads of their own, off the event loop.
    index_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(4, thread_name_prefix="index")
    )

    def open_store(self) -> None:
        """Open (and recover) every collection; runs once at start-up, in a thread.
        A replica with `collections` off opens nothing (its collection routes answer 404)."""
        if not self.settings.collections:
            return
        device = str(resolve_device(self.settings.device))
        self.store = CollectionStore(
            Path(self.settings.collections_dir), self.settings.snapshot_every, device
        )

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
        self.image_batcher = self._batcher(_stacked(encoder), IMAGE)
        self.text_batcher = self._batcher(encoder.encode_texts, TEXT)
        self.classifiers = ClassifierCache(self.embed_texts, s.classifier_cache)
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
            on_batch=self.metrics.batch_size.labels(modality).observe,
        )
        self.metrics.queue_depth.labels(modality).set_function(lambda: b.pending)
        b.start()
        return b

    async def close(self) -> None:
        for b in (self.image_batcher, self.text_batcher):
            if b:
                await b.stop()
        # off the event loop: first every index call still running ends (one cancelled by
        # the graceful timeout may still be writing), then the store closes, alone
        await asyncio.get_running_loop().run_in_executor(None, self._close_store)
        self.model_pool.shutdown(wait=False, cancel_futures=True)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    def _close_store(self) -> None:
        self.index_pool.shutdown(wait=True)
        if self.store is not None:
            self.store.close(snapshot=True)
            log.info("collections closed (a snapshot written where a log held records)")

    # -- used by the routes -----------------------------------------------------------
    def require_encoder(self, model: str | None = None, capability: str | None = None) -> Encoder:
        enc = self.encoder
        if enc is None:
            msg = "the model is still loading" if self.load_error is None else self.load_error
            raise ApiError(503, "model_not_ready", msg, headers={"Retry-After": "5"})
        if model is not None and model not in (enc.model_id, self.settings.model):
            raise ApiError(
                404,
                "model_not_found",
                f"model {model!r} is not loaded here; this server serves {enc.model_id!r} "
                "(omit 'model' or see GET /v1/models)",
            )
        if capability is not None and capability not in enc.capabilities:
            raise ApiError(
                400,
                "missing_capability",
                f"model {enc.model_id!r} has no {capability!r} capability "
                f"(it has: {', '.join(sorted(enc.capabilities))})",
            )
        return enc

    async def embed_texts(self, texts: list[str]) -> torch.Tensor:
        assert self.text_batcher is not None
        return await _submit(self.text_batcher, texts)

    async def embed_image_bytes(self, blobs: list[bytes]) -> torch.Tensor:
        """Decode + preprocess in the decode pool (in parallel), then batch on the model."""
        enc = self.require_encoder(capability=IMAGE)
        loop = asyncio.get_running_loop()
        prep = [
            loop.run_in_executor(self.decode_pool, self._prepare, enc, blob, i)
            for i, blob in enumerate(blobs)
        ]
        tensors = await asyncio.gather(*prep)
        assert self.image_batcher is not None
        return await _submit(self.image_batcher, tensors)

    def _prepare(self, enc: Encoder, blob: bytes, index: int) -> torch.Tensor:
        size = enc.info.preprocess.size
        image = decode_image(blob, self.settings.max_image_pixels, draft_size=size, index=index)
        return enc.preprocess_image(image)


async def _submit(batcher: Batcher, items: list) -> torch.Tensor:  # type: ignore[type-arg]
    try:
        return await batcher.submit(items)
    except torch.OutOfMemoryError as e:
        # The batch, not the request, was too big for the device right now: retryable.
        raise ApiError(
            503,
            "out_of_memory",
            "the device ran out of memory; retry, or send fewer items",
            headers={"Retry-After": "1"},
        ) from e
    except QueueFullError as e:
        raise ApiError(
            503,
            "overloaded",
            f"the server is at capacity ({e}); retry shortly",
            headers={"Retry-After": "1"},
        ) from e


def _stacked(encoder: Encoder) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    def run(items: list[torch.Tensor]) -> torch.Tensor:
        return encoder.encode_image_tensors(torch.stack(items))

    return run


def _warm_up(encoder: Encoder) -> None:
    """One forward per modality, so the first request pays no lazy initialisation."""
    size = encoder.info.preprocess.size
    encoder.encode_images([Image.new("RGB", (size, size), (127, 127, 127))])
    if TEXT in encoder.capabilities:
        encoder.encode_texts(["warm up"])
