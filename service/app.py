"""create_app(settings): the FastAPI application and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp

from contrastkit.service.api import openapi_docs, openapi_rules
from contrastkit.service.api.openapi_docs import error_responses
from contrastkit.service.api.routes import (
    admin,
    aliases,
    classify,
    collections,
    embed,
    health,
    migrations,
    models,
    openai,
    web,
)
from contrastkit.service.api.shedding import early_refusal
from contrastkit.service.errors import install_handlers
from contrastkit.service.metrics import Metrics
from contrastkit.service.middleware import (
    AllowMiddleware,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    DrainMiddleware,
    MetricsMiddleware,
    ShedMiddleware,
    is_open,
)
from contrastkit.service.observability import tracing
from contrastkit.service.observability.request_id import RequestIdMiddleware
from contrastkit.service.settings import Settings, get_settings
from contrastkit.service.state import ServiceState
from contrastkit.training.encoders import Encoder

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider


def create_app(
    settings: Settings | None = None,
    encoder: Encoder | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """The service. The model loads in the background after start-up (/readyz says when);
    pass `encoder` to serve one already built (tests, benchmarks). With the `tracing`
    setting on, spans go to `tracer_provider` (default: as the OTEL_* variables say);
    tracing.TracingError when the otel extra is not installed."""
    settings = settings or get_settings()
    spans = tracing.start(tracer_provider) if settings.tracing else None
    state = ServiceState(settings=settings, metrics=Metrics(), tracing=spans)

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

    # /docs and /redoc with Swagger UI and ReDoc from the fastapi-offline package (served
    # under /static-offline-docs), not from a CDN: the docs work offline.
    app = FastAPIOffline(
        title="contrastive",
        version="0.1.0",
        summary="Image and text embeddings and zero-shot classification",
        lifespan=lifespan,
        swagger_ui_parameters={"validatorUrl": None},  # never ask validator.swagger.io
    )
    app.state.service = state
    install_handlers(app)
    for router, errors in _routers(settings):
        app.include_router(router, responses=error_responses(*errors, 500))
    openapi_docs.install(
        app, settings, is_open, admin.PREFIX, lambda: openapi_rules.served_spaces(state.models)
    )
    # Innermost first: metrics see every response, auth runs before any body is read.
    app.add_middleware(ShedMiddleware, refusal=lambda path: early_refusal(state.models, path))
    app.add_middleware(AllowMiddleware, routes=app.router.routes)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.request_keys or settings.admin_access:  # else it would pass every request on
        app.add_middleware(
            ApiKeyMiddleware,
            keys=settings.request_keys,
            admin_keys=settings.admin_access,
            admin_prefix=admin.PREFIX,
        )
    app.add_middleware(DrainMiddleware, draining=lambda: state.draining)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    if spans is not None:  # off: no tracing middleware at all, not one that does nothing
        spans.instrument(app)
    _wrap_stack(app, RequestIdMiddleware)
    return app


def _wrap_stack(app: FastAPI, middleware: Callable[[ASGIApp], ASGIApp]) -> None:
    """Put `middleware` around the app's whole stack, Starlette's ServerErrorMiddleware
    (and the tracing middleware) included: add_middleware puts it inside them, where it
    would not see the 500 that ServerErrorMiddleware answers for an unhandled error."""
    build = app.build_middleware_stack

    def build_wrapped() -> ASGIApp:
        return middleware(build())

    app.build_middleware_stack = build_wrapped  # type: ignore[method-assign]


# The error statuses each router's operations may answer (500, a bug, goes to all of them;
# 401 to the protected ones when API keys are set, contrastkit.service.api.openapi_docs).
MODEL_ERRORS = (400, 404, 413, 415, 422, 502, 503)
COLLECTION_ERRORS = (400, 404, 409, 413, 415, 422, 502, 503, 507)
ADMIN_ERRORS = (400, 403, 404, 409, 413, 415, 422, 503)


def _routers(settings: Settings) -> list[tuple[APIRouter, tuple[int, ...]]]:
    collection_router = collections.router if settings.collections else collections.disabled_router
    alias_router = aliases.router if settings.collections else aliases.disabled_router
    admin_router = admin.router if settings.admin_access else admin.disabled_router
    migration_router = migrations.router if settings.collections else migrations.disabled_router
    return [
        (health.router, ()),
        (models.router, (503,)),
        (embed.router, MODEL_ERRORS),
        (classify.router, MODEL_ERRORS),
        (openai.router, MODEL_ERRORS),
        (collection_router, COLLECTION_ERRORS),
        (alias_router, COLLECTION_ERRORS),
        (admin_router, ADMIN_ERRORS),
        *([(migration_router, ADMIN_ERRORS)] if settings.admin_access else []),
        (web.router, ()),
    ]
