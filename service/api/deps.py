"""What a route needs, resolved per request: each alias below names one thing a route
uses, and the checks that thing implies (the model is loaded, it can embed images or
texts, the store is open, the collection exists) run here, before the route's body.

FastAPI resolves each dependency once per request, so a route needing both encoders checks
readiness once. The checks raise domain errors; service.errors answers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Request

from service.api.client_gone import watch_request
from service.domain_errors import ModelError
from service.index.backend import CollectionBackend, CollectionHandle
from service.index.types import CollectionError
from service.metrics import Metrics
from service.runtime.embedding import ImageEmbedder, TextEmbedder
from service.runtime.served import ServedModel
from service.runtime.zeroshot import ClassifierCache
from service.settings import Settings
from service.state import ServiceState
from training.encoders import IMAGE, TEXT, Encoder

T = TypeVar("T")


async def get_state(request: Request) -> ServiceState:
    watch_request(request)  # embeddings for a client that leaves are cancelled
    return request.app.state.service  # type: ignore[no-any-return]


# The whole state: only for the health routes, which report on all of it.
State = Annotated[ServiceState, Depends(get_state)]


async def get_settings(state: State) -> Settings:
    return state.settings


async def get_metrics(state: State) -> Metrics:
    return state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


# -- the model ------------------------------------------------------------------------------
def require_capability(enc: Encoder, capability: str) -> Encoder:
    """`enc`, or ModelError `missing_capability` naming what it has instead."""
    if capability not in enc.capabilities:
        raise ModelError(
            "missing_capability",
            f"model {enc.model_id!r} has no {capability!r} capability "
            f"(it has: {', '.join(sorted(enc.capabilities))})",
        )
    return enc


@dataclass(frozen=True)
class ModelHandle:
    """A served model, checked when it is used: for routes that need it for some inputs
    only (a collection of raw vectors needs no model; texts and images do), and for
    routes whose body names the model (`select`)."""

    state: ServiceState
    served: ServedModel | None = None  # None: the default model

    @property
    def model(self) -> ServedModel:
        return self.served if self.served is not None else self.state.default

    def select(self, name: str | None) -> ModelHandle:
        """The model a request names in `model` (id or reference; None: the default), or
        ModelError `model_not_found` listing the served ones."""
        return ModelHandle(self.state, self.state.model_for(name))

    def for_space(self, model_id: str) -> ModelHandle | None:
        """The loaded model whose id is `model_id` (a collection's space), else None."""
        for m in self.state.models:
            if m.encoder is not None and m.encoder.model_id == model_id:
                return ModelHandle(self.state, m)
        return None

    def precheck(self, capability: str) -> None:
        """Before a body is read: with one model served, its readiness and `capability`
        (a request it cannot serve is refused before its upload is read)."""
        if len(self.state.models) == 1:
            self.require(capability)

    def served_ids(self) -> list[str]:
        """The ids of the loaded models (references of those still loading)."""
        return [m.encoder.model_id if m.encoder else m.ref for m in self.state.models]

    @property
    def current(self) -> Encoder | None:
        """The encoder if it is loaded, else None (no error)."""
        return self.model.encoder

    def require(self, capability: str | None = None) -> Encoder:
        """The loaded encoder (`model_not_ready` if none), with `capability` if given."""
        enc = self.model.require_encoder()
        return enc if capability is None else require_capability(enc, capability)

    def text_embedder(self) -> TextEmbedder:
        self.require(TEXT)
        assert self.model.texts is not None  # set together with the encoder
        return self.model.texts

    def image_embedder(self) -> ImageEmbedder:
        self.require(IMAGE)
        assert self.model.images is not None
        return self.model.images

    def classifiers(self) -> ClassifierCache:
        self.require(TEXT)  # a classifier is made of embedded texts
        assert self.model.classifiers is not None
        return self.model.classifiers


async def model_handle(state: State) -> ModelHandle:
    return ModelHandle(state)


ModelHandleDep = Annotated[ModelHandle, Depends(model_handle)]


async def loaded_encoder(model: ModelHandleDep) -> Encoder:
    return model.require()


async def image_encoder(model: ModelHandleDep) -> Encoder:
    return model.require(IMAGE)


async def text_encoder(model: ModelHandleDep) -> Encoder:
    return model.require(TEXT)


async def image_embedder(model: ModelHandleDep) -> ImageEmbedder:
    return model.image_embedder()


async def text_embedder(model: ModelHandleDep) -> TextEmbedder:
    return model.text_embedder()


async def classifiers(model: ModelHandleDep) -> ClassifierCache:
    return model.classifiers()


# -- the collections -------------------------------------------------------------------------
class IndexRunner(Protocol):
    """Runs a blocking store call in the index pool (fsync never blocks the event loop)."""

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T: ...


async def index_runner(state: State) -> IndexRunner:
    return state.run_index


async def collection_store(state: State) -> CollectionBackend:
    if state.store is None:
        raise CollectionError("store_unavailable", "the collection store is not open")
    return state.store


IndexDep = Annotated[IndexRunner, Depends(index_runner)]
StoreDep = Annotated[CollectionBackend, Depends(collection_store)]


async def named_collection(name: str, store: StoreDep, run: IndexDep) -> CollectionHandle:
    """The collection of the path's `{name}` (`collection_not_found`, `invalid_name`)."""
    return await run(store.get, name)


CollectionDep = Annotated[CollectionHandle, Depends(named_collection)]
