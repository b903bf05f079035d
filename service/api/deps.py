"""What a route needs, resolved per request: each alias below names one thing a route
uses, and the checks that thing implies (the model is loaded and has the capabilities the
route needs, the store is open, the collection exists) run here, before the route's body.

A model route declares a dependency of its own that reads what the request sent (a JSON
body, declared there so that FastAPI validates and documents it as before, or a
multipart upload) and resolves the model it names with `ServedModels.resolve`; the route
receives a `ModelRequest`, ready to embed with. FastAPI resolves each dependency once per
request. The checks raise domain errors; contrastkit.service.errors answers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Protocol, TypeVar

from fastapi import Depends, Request

from contrastkit.service.api.writes import GatedWrite
from contrastkit.service.index.backend import CollectionBackend, CollectionHandle
from contrastkit.service.index.types import CollectionError
from contrastkit.service.metrics import Metrics
from contrastkit.service.runtime import disconnect
from contrastkit.service.runtime.served import LoadedModel, ServedModels
from contrastkit.service.settings import Settings
from contrastkit.service.state import ServiceState

T = TypeVar("T")
S = TypeVar("S")  # what a model route was sent


async def service_state(request: Request) -> ServiceState:
    return request.app.state.service  # type: ignore[no-any-return]


# The whole state: only for the health routes, which report on all of it.
State = Annotated[ServiceState, Depends(service_state)]


async def service_settings(state: State) -> Settings:
    return state.settings


async def service_metrics(state: State) -> Metrics:
    return state.metrics


SettingsDep = Annotated[Settings, Depends(service_settings)]
MetricsDep = Annotated[Metrics, Depends(service_metrics)]


# -- a client that leaves -------------------------------------------------------------------
async def watch_disconnect(request: Request) -> None:
    """Router dependency of every router whose routes embed: the embeddings of a request
    whose client disconnects are cancelled (contrastkit.service.runtime.disconnect).

    The channel is read only while an embedding runs, after the route has read the whole
    body; what comes then is the disconnect (or, once the answer is sent, nothing)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    disconnect.watch(gone)


# -- the models -----------------------------------------------------------------------------
async def served_models(state: State) -> ServedModels:
    return state.models


# Every model served: for routes whose model depends on what they are sent (a collection's
# space; no model at all for raw vectors), and for the dependencies below.
ModelsDep = Annotated[ServedModels, Depends(served_models)]


async def default_model(models: ModelsDep) -> LoadedModel:
    """The default model, loaded (`model_not_ready` until it is warm)."""
    return models.default.require()


DefaultModel = Annotated[LoadedModel, Depends(default_model)]


def precheck(models: ServedModels, *capabilities: str) -> None:
    """Before a body is read: with one model served, its readiness and `capabilities`, so
    that a request it cannot serve is refused before its upload is read. (With several,
    the body names the model: nothing can be known before it is read.)"""
    if len(models) == 1:
        models.default.require(*capabilities)


@dataclass(frozen=True)
class ModelRequest(Generic[S]):
    """What a model route works on, from its request dependency: what the request sent,
    read and checked as far as it can be without the model, and the model it names,
    loaded, with every capability the route needs."""

    sent: S
    model: LoadedModel


# -- the collections -------------------------------------------------------------------------
class IndexRunner(Protocol):
    """Runs a blocking store call in the index pool (fsync never blocks the event loop)."""

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T: ...


async def index_runner(state: State) -> IndexRunner:
    return state.run_index


async def collection_store(state: State) -> CollectionBackend:
    if state.store is None:
        if state.store_missing is not None:  # FAISS not installed: 503, and what to install
            raise CollectionError("backend_unavailable", state.store_missing)
        raise CollectionError("store_unavailable", "the collection store is not open")
    return state.store


IndexDep = Annotated[IndexRunner, Depends(index_runner)]
StoreDep = Annotated[CollectionBackend, Depends(collection_store)]


async def named_collection(name: str, store: StoreDep, run: IndexDep) -> CollectionHandle:
    """The collection of the path's `{name}` (`collection_not_found`, `invalid_name`)."""
    return await run(store.get, name)


CollectionDep = Annotated[CollectionHandle, Depends(named_collection)]


async def gated_write(
    name: str, state: State, store: StoreDep, col: CollectionDep, run: IndexDep
) -> GatedWrite:
    """Writes to the path's collection, through the write gate (contrastkit.service.api.writes)."""
    return GatedWrite(state.gate, store, name, col, run)


WriteDep = Annotated[GatedWrite, Depends(gated_write)]
