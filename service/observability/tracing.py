"""OpenTelemetry tracing, when the `tracing` setting is on: FastAPI's server span for every
request (opentelemetry-instrumentation-fastapi), and spans of our own for what it cannot
see: a request's wait in the batcher queue, the batch and the model's forward call
(batch_spans.py), and every call into the collection store.

Nothing of OpenTelemetry is imported unless tracing is on: this module imports it inside
its functions, and the rest of the service holds a `Tracing` or None and tests for None,
so with tracing off a request pays for one `is None` test where a span would be.

Where the spans go is configured the standard OpenTelemetry way, by environment
variables: OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
OTEL_SERVICE_NAME (default `contrastive`), OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER,
OTEL_PYTHON_FASTAPI_EXCLUDED_URLS, OTEL_TRACES_EXPORTER (otlp, console or none). A process
that already configured a tracer provider (opentelemetry-instrument) keeps it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from contrastkit.service.observability import request_id

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from contrastkit.service.observability.batch_spans import BatchSpans

INSTALL = "pip install 'contrastkit[otel]'"
# What `require` imports: the packages of the otel extra.
NEEDED = (
    "opentelemetry.sdk.trace",
    "opentelemetry.instrumentation.fastapi",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)
REQUEST_ID_ATTRIBUTE = "contrastive.request_id"


class TracingError(RuntimeError):
    """Tracing cannot start as configured; the message is one line that says why."""


def require() -> None:
    """Raise TracingError naming the extra to install unless its packages import."""
    for module in NEEDED:
        try:
            __import__(module)
        except ImportError as e:
            raise TracingError(
                f"tracing is on but OpenTelemetry is not installed ({e.name or module} is "
                f"missing): {INSTALL}"
            ) from e


class Tracing:
    """The spans of one app: made by `provider`'s tracer; `owned`: the provider was made
    here (not given, not configured already), so `close` shuts it down."""

    def __init__(self, provider: TracerProvider, owned: bool = False) -> None:
        self.provider = provider
        self.owned = owned
        self.tracer: Tracer = provider.get_tracer("contrastive.service")

    def instrument(self, app: FastAPI) -> None:
        """FastAPI's server span around every request, with its request id."""
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.provider,
            server_request_hook=_tag_request,
            # no span per ASGI message: a request's body read and its answer's send are
            # already inside the server span; one span each would cost more than they tell
            exclude_spans=["receive", "send"],
        )

    def batcher(self, modality: str, model_id: str) -> BatchSpans:
        """The spans of one batcher (a model's texts or images)."""
        from contrastkit.service.observability.batch_spans import BatchSpans

        return BatchSpans(self.tracer, modality, model_id)

    @contextlib.contextmanager
    def index_call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Iterator[None]:
        """A span around one call into the collection store: `collection.<op>` for a
        collection's own operations (upsert, search, get, ...), `collections.<op>` for the
        store's (create, drop, list, get). Its time includes waiting for an index thread."""
        name, attributes = _index_call(fn, args)
        with self.tracer.start_as_current_span(name, attributes=attributes):
            yield

    def close(self) -> None:
        """Export what is buffered and stop, if the provider is ours."""
        if self.owned:
            self.provider.shutdown()  # type: ignore[attr-defined]


def start(provider: TracerProvider | None = None) -> Tracing:
    """Tracing on `provider`; without one, on the process's tracer provider if one is
    configured already, else on a new one exporting as the OTEL_* variables say."""
    require()
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    if provider is not None:
        return Tracing(provider)
    configured = trace.get_tracer_provider()
    if isinstance(configured, SdkTracerProvider):
        return Tracing(configured)
    return Tracing(_new_provider(), owned=True)


def _new_provider() -> TracerProvider:
    """An SDK provider with the exporters of OTEL_TRACES_EXPORTER (default otlp: OTLP over
    HTTP to OTEL_EXPORTER_OTLP_ENDPOINT, by default http://localhost:4318)."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create()  # reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "contrastive"}))
    # shut down by the app's lifespan (Tracing.close), not at exit: then it is flushed
    # before the process reports that it stopped cleanly
    provider = SdkTracerProvider(resource=resource, shutdown_on_exit=False)
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    for name in (n.strip().lower() for n in names.split(",") if n.strip()):
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        elif name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "none":
            continue
        else:
            raise TracingError(
                f"OTEL_TRACES_EXPORTER={names}: this service exports otlp, console or none"
            )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _tag_request(span: Span, scope: dict[str, Any]) -> None:
    """The server span gets the request's id (set by RequestIdMiddleware, outside it)."""
    rid = request_id.current()
    if rid is not None and span.is_recording():
        span.set_attribute(REQUEST_ID_ATTRIBUTE, rid)


def _index_call(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
    """The span name and attributes of a store call `fn(*args)`: a collection handle's
    method, a function given a handle first, or a method of the store itself."""
    op = getattr(fn, "__name__", "call").lstrip("_")
    owner = getattr(fn, "__self__", None)
    attributes: dict[str, Any] = {"code.function.name": getattr(fn, "__qualname__", op)}
    if _is_handle(owner):
        handle, rest = owner, args
    elif args and _is_handle(args[0]):
        handle, rest = args[0], args[1:]
    else:
        handle, rest = None, args
    if handle is not None:
        attributes["contrastive.collection"] = handle.name
        if op in ("upsert", "delete", "stored") and rest:
            attributes["contrastive.items"] = len(rest[0])
        elif op == "search" and len(rest) >= 2:
            attributes["contrastive.queries"] = len(rest[0])
            attributes["contrastive.k"] = int(rest[1])
        return f"collection.{op}", attributes
    if args and isinstance(args[0], str):  # the store's create, drop and get name one
        attributes["contrastive.collection"] = args[0]
    return f"collections.{op}", attributes


def _is_handle(x: object) -> bool:
    """A collection handle (it has a name); the store has none."""
    return isinstance(getattr(x, "name", None), str)


class TraceIdsFilter(logging.Filter):
    """Puts `trace_id` and `span_id` (hex, as trace viewers show them) on every record
    emitted inside a span, so that a log line leads to its trace."""

    def __init__(self) -> None:
        super().__init__()
        from opentelemetry import trace

        self._current_span = trace.get_current_span

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = self._current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        return True
