"""Everything the running service holds: settings, the models (each, once loaded, with its
embedders and their batchers: contrastkit.service.runtime.served; the set and its changes:
contrastkit.service.runtime.lifecycle), the collection store, thread pools.

Created in the app's lifespan and kept on `app.state.service`; routes reach it via
`contrastkit.service.api.deps`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from contrastkit.service.index.backend import CollectionBackend
from contrastkit.service.index.factory import FaissMissingError, open_backend
from contrastkit.service.index.gate import WriteGate
from contrastkit.service.metrics import Metrics
from contrastkit.service.observability.tracing import Tracing
from contrastkit.service.runtime.batcher import Batcher
from contrastkit.service.runtime.lifecycle import ModelLifecycle
from contrastkit.service.runtime.migrations import Migrations
from contrastkit.service.runtime.served import Pools, ServedModel, ServedModels
from contrastkit.service.settings import Settings
from contrastkit.training.encoders import Encoder, resolve_device

log = logging.getLogger("contrastive.service")
T = TypeVar("T")


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    draining: bool = False
    tracing: Tracing | None = None  # None: tracing is off, and no span is made
    # the served models and every change to them (contrastkit.service.runtime.lifecycle); the set
    # itself is `models`; set in __post_init__
    lifecycle: ModelLifecycle = field(init=False)
    # One model thread: torch parallelises inside an op; two would only fight over cores.
    model_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="model")
    )
    # One load thread, for the start-up loads and the admin API's: loads take turns
    # rather than fight over the cores and the memory the served models are using.
    load_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="load")
    )
    decode_threads: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))
    decode_pool: ThreadPoolExecutor = field(init=False)
    # weak: a retired model's batchers leave the queue-depth gauge when they are freed
    _batchers: dict[str, weakref.WeakSet[Batcher[Any]]] = field(default_factory=dict)

    store: CollectionBackend | None = None
    # why `store` is None with collections on: FAISS is not installed (collection calls
    # answer 503 backend_unavailable with this; the models are served all the same)
    store_missing: str | None = None
    # Index writes block on fsync: they get threads of their own, off the event loop.
    index_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(4, thread_name_prefix="index")
    )
    # Item writes pass this gate; a migration's switch holds its collection there alone.
    gate: WriteGate = field(default_factory=WriteGate)
    migrations: Migrations = field(init=False)

    def __post_init__(self) -> None:
        self.decode_pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")
        self.migrations = Migrations(self.gate)
        s = self.settings
        models = ServedModels(
            tuple(
                ServedModel(ref, s.pretrained if i == 0 else None)
                for i, ref in enumerate(s.model_refs)
            )
        )
        pools = Pools(
            self.model_pool,
            self.load_pool,
            self.decode_pool,
            self.max_decoding,
            self._batcher,
            decode_threads=self.decode_threads,
        )
        self.lifecycle = ModelLifecycle(models, s, pools, self.metrics)

    @property
    def models(self) -> ServedModels:
        """Every model served now, the default first (a value: changes replace it)."""
        return self.lifecycle.models

    # -- readiness, over every model (/readyz) -------------------------------------------
    @property
    def load_error(self) -> str | None:
        """The first model's load failure, else None."""
        return next((m.load_error for m in self.models if m.load_error), None)

    @property
    def loading_for(self) -> float | None:
        """Seconds the model now loading has been loading, or None."""
        return next((m.loading_for for m in self.models if m.loading_since is not None), None)

    def loading_reason(self) -> str | None:
        """`loading model REF (N s)` while one loads, else None (/readyz's 503 reason)."""
        return next((m.loading_reason() for m in self.models if m.loading_since is not None), None)

    @property
    def max_decoding(self) -> int:
        """Images handed to the decode pool at most (more get 503 at once): two per thread
        keep every thread busy; at least one full request, so that one always fits."""
        return max(2 * self.decode_threads, self.settings.max_images)

    def open_store(self) -> None:
        """Open (and recover) every collection; runs once at start-up, in a thread.
        A replica with `collections` off opens nothing (its collection routes answer 404).
        Without FAISS (neither the `cpu` nor the `gpu` extra) the server starts all the
        same: embeddings are served, collection calls answer why (`store_missing`)."""
        if not self.settings.collections:
            return
        try:
            self.store = open_collections(self.settings)
        except FaissMissingError as e:
            self.store_missing = e.message
            log.warning("collections unavailable: %s", e.message)

    async def run_index(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call in the index pool, in the request's context (so that
        what the store logs names the request), in a span when tracing is on."""
        loop = asyncio.get_running_loop()
        if self.tracing is None:
            return await loop.run_in_executor(self.index_pool, _in_context(), fn, *args)
        with self.tracing.index_call(fn, args):
            return await loop.run_in_executor(self.index_pool, _in_context(), fn, *args)

    @property
    def ready(self) -> bool:
        """Every model is loaded and warm, and the server is not shutting down."""
        return all(m.loaded is not None for m in self.models) and not self.draining

    # -- lifecycle ------------------------------------------------------------------
    async def load(self, encoder: Encoder | None = None) -> None:
        """Load and warm every start-up model in turn, the default first (`encoder`: the
        default's, built by the caller), each starting its batchers as soon as it is warm."""
        await self.lifecycle.start(encoder)

    def _batcher(self, fn: object, modality: str, model_id: str) -> Batcher:  # type: ignore[type-arg]
        s = self.settings
        b: Batcher = Batcher(  # type: ignore[type-arg]
            fn,  # type: ignore[arg-type]
            self.model_pool,
            s.max_batch_size,
            s.max_wait_ms,
            s.max_queue,
            s.max_queue_wait_ms,
            on_batch=self.metrics.batch_size.labels(modality).observe,
            on_batch_seconds=self.metrics.batch_seconds.labels(modality).observe,
            always_admit=s.always_admit_requests,
            spans=None if self.tracing is None else self.tracing.batcher(modality, model_id),
        )
        group = self._batchers.setdefault(modality, weakref.WeakSet())
        group.add(b)
        # the gauge sums every model's queue of this modality (retired ones still draining)
        self.metrics.queue_depth.labels(modality).set_function(
            lambda: sum(x.pending for x in list(group))
        )
        b.start()
        return b

    async def close(self) -> None:
        await self.lifecycle.close()
        for model in self.models:
            await model.stop()
        self.load_pool.shutdown(wait=False, cancel_futures=True)
        # off the event loop: first every index call still running ends (one cancelled by
        # the graceful timeout may still be writing), then the store closes, alone
        await asyncio.get_running_loop().run_in_executor(None, self._close_store)
        self.model_pool.shutdown(wait=False, cancel_futures=True)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        if self.tracing is not None:  # the last spans out (an export blocks: off the loop)
            await asyncio.get_running_loop().run_in_executor(None, self.tracing.close)

    def _close_store(self) -> None:
        self.migrations.close()  # each stops after its batch; a new start resumes it
        self.index_pool.shutdown(wait=True)
        if self.store is not None:
            self.store.close()
            log.info("collections closed")


def _in_context() -> Callable[..., Any]:
    """A runner of a call in a copy of the current context: executors do not carry it."""
    return contextvars.copy_context().run


def open_collections(s: Settings) -> CollectionBackend:
    """The collection backend the settings name: FAISS in collections_dir, or Qdrant at
    qdrant_url (without one, qdrant-client's local mode in collections_dir/qdrant)."""
    root = Path(s.collections_dir)
    qdrant = None
    if s.collections_backend == "qdrant":
        from contrastkit.service.index.factory import QdrantConfig

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
