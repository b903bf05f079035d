"""create_app(settings): the FastAPI application and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from service.api.routes import classify, collections, embed, health, models, openai, web
from service.errors import install_handlers
from service.metrics import Metrics
from service.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    DrainMiddleware,
    MetricsMiddleware,
)
from service.settings import Settings, get_settings
from service.state import ServiceState
from training.encoders import Encoder


def create_app(settings: Settings | None = None, encoder: Encoder | None = None) -> FastAPI:
    """The service. The model loads in the background after start-up (/readyz says when);
    pass `encoder` to serve one already built (tests, benchmarks)."""
    settings = settings or get_settings()
    state = ServiceState(settings=settings, metrics=Metrics())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.get_running_loop().run_in_executor(state.index_pool, state.open_store)
        loading = asyncio.create_task(state.load(encoder))
        try:
            yield
        finally:
            state.draining = True
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await state.close()

    app = FastAPI(
        title="contrastive",
        version="0.1.0",
        summary="Image and text embeddings and zero-shot classification",
        lifespan=lifespan,
    )
    app.state.service = state
    install_handlers(app)
    for router in (
        health.router,
        models.router,
        embed.router,
        classify.router,
        openai.router,
        collections.router if settings.collections else collections.disabled_router,
        web.router,
    ):
        app.include_router(router)
    # Outermost first: metrics see every response, auth runs before any body is read.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    app.add_middleware(DrainMiddleware, draining=lambda: state.draining)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
