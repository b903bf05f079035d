"""Tracing (contrastkit.service.observability.tracing): FastAPI's server span with our spans inside
it when the setting is on; nothing of it, not even a middleware, when it is off; one clear
line when the otel extra is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from contrastkit.service.app import create_app
from contrastkit.service.observability import tracing
from contrastkit.service.observability.request_id import RequestIdFilter
from contrastkit.service.observability.tracing import TraceIdsFilter
from contrastkit.service.settings import Settings
from tests.service.observability.conftest import (
    BreakableEncoder,
    Spans,
    TracedApp,
    kept_records,
)

ROOT = Path(__file__).resolve().parents[3]
MODEL = "fake:test"


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def test_an_embeddings_request_makes_its_server_span_and_the_batcher_spans(
    traced_app: TracedApp, spans: Spans
) -> None:
    client = traced_app()
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": ["a cat", "a dog", "a bird"]})
    assert r.status_code == 200

    server = spans.one("POST /v1/embeddings")
    assert server.kind is SpanKind.SERVER
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/v1/embeddings"
    assert server.attributes["contrastive.request_id"] == r.headers["x-request-id"]

    # the queue wait is the request's own: a child of its server span, in its trace
    wait = spans.one("batcher.queue_wait")
    assert _parent(wait) == _id(server)
    assert wait.context is not None and server.context is not None
    assert wait.context.trace_id == server.context.trace_id
    assert wait.attributes == {
        "contrastive.modality": "text",
        "contrastive.model": MODEL,
        "contrastive.items": 3,
        "contrastive.batches": 1,
    }
    assert wait.start_time is not None and wait.end_time is not None
    assert server.start_time is not None and server.end_time is not None
    assert server.start_time <= wait.start_time <= wait.end_time <= server.end_time

    # the batch serves several requests: a root of its own, linked both ways
    batch = spans.one("batcher.batch")
    assert batch.parent is None
    assert [(link.context.span_id, dict(link.attributes or {})) for link in batch.links] == [
        (_id(server), {"contrastive.items": 3})
    ]
    assert [link.context.span_id for link in wait.links] == [_id(batch)]
    assert batch.attributes is not None
    assert batch.attributes["contrastive.batch.size"] == 3
    assert batch.attributes["contrastive.batch.requests"] == 1

    # the model's call, inside the batch
    forward = spans.one("model.forward")
    assert _parent(forward) == _id(batch)
    assert forward.attributes is not None
    assert forward.attributes["contrastive.batch.size"] == 3
    assert forward.attributes["contrastive.model"] == MODEL


def test_a_caller_trace_is_continued(traced_app: TracedApp, spans: Spans) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    r = traced_app().get("/v1/models", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert r.status_code == 200
    server = spans.one("GET /v1/models")
    assert server.context is not None and server.parent is not None
    assert format(server.context.trace_id, "032x") == trace_id
    assert format(server.parent.span_id, "016x") == parent_id


def test_collection_calls_are_spans_of_their_request(traced_app: TracedApp, spans: Spans) -> None:
    client = traced_app()
    assert client.post("/v1/collections", json={"name": "pets"}).status_code == 201
    create = spans.one("collections.create")
    assert create.attributes is not None and create.attributes["contrastive.collection"] == "pets"
    assert _parent(create) == _id(spans.one("POST /v1/collections"))

    spans.clear()
    items = [{"id": "cat", "text": "a cat"}, {"id": "dog", "text": "a dog"}]
    r = client.post("/v1/collections/pets/items", json={"items": items})
    assert r.status_code == 200
    upsert = spans.one("collection.upsert")
    assert upsert.attributes is not None
    assert upsert.attributes["contrastive.collection"] == "pets"
    assert upsert.attributes["contrastive.items"] == 2
    server = spans.one("POST /v1/collections/{name}/items")
    assert _parent(upsert) == _id(server)
    # the texts were embedded on the way: the request waited in the batcher too
    assert _parent(spans.one("batcher.queue_wait")) == _id(server)

    spans.clear()
    r = client.post("/v1/collections/pets/search", json={"queries": [{"text": "cat"}], "k": 2})
    assert r.status_code == 200
    search = spans.one("collection.search")
    assert search.attributes is not None
    assert search.attributes["contrastive.queries"] == 1
    assert search.attributes["contrastive.k"] == 2
    # the collection named in the path is opened first: a call of the store's
    assert spans.one("collections.get").attributes == {
        "code.function.name": "FaissBackend.get",
        "contrastive.collection": "pets",
    }


def test_a_refused_request_has_its_status_on_its_server_span(
    traced_app: TracedApp, spans: Spans
) -> None:
    client = traced_app()
    r = client.post("/v1/collections/none-such/search", json={"queries": [{"text": "x"}]})
    assert r.status_code == 404
    server = spans.one("POST /v1/collections/{name}/search")
    assert server.attributes is not None and server.attributes["http.status_code"] == 404


TRACING_OFF = """
import sys
import fastapi  # recent FastAPI imports opentelemetry's API itself: that is not ours
before = {m for m in sys.modules if m.startswith("opentelemetry")}
from fastapi.testclient import TestClient
from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, wait_ready

app = create_app(Settings(collections_dir=sys.argv[1]), encoder=FakeEncoder())
with TestClient(app) as client:
    wait_ready(client)
    assert client.post("/v1/embeddings", json={"model": "fake:test", "input": "x"}).is_success
    assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
stack, names = app.middleware_stack, []
while stack is not None:
    names.append(type(stack).__module__ + "." + type(stack).__name__)
    stack = getattr(stack, "app", None)
print(sorted({m for m in sys.modules if m.startswith("opentelemetry")} - before))
print(sorted(m for m in sys.modules if m.startswith("contrastkit.service.observability")))
print(names)
"""


def test_tracing_off_imports_nothing_of_opentelemetry_and_adds_no_middleware(
    tmp_path: Path,
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", TRACING_OFF, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    imported, ours, stack = out.stdout.strip().splitlines()[-3:]
    assert imported == "[]"
    assert "batch_spans" not in ours
    assert "opentelemetry" not in stack and "OpenTelemetry" not in stack
    assert "RequestIdMiddleware" in stack  # the request id is always on


def test_without_the_extra_tracing_fails_at_start_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.fastapi", None)
    with pytest.raises(tracing.TracingError) as e:
        create_app(Settings(tracing=True))
    message = str(e.value)
    assert "\n" not in message
    assert "pip install 'contrastkit[otel]'" in message
    assert "opentelemetry.instrumentation.fastapi" in message


def test_a_provider_of_its_own_follows_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # as if nothing were configured: a provider of our own is made
    monkeypatch.setattr("opentelemetry.trace.get_tracer_provider", lambda: None)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")  # nothing leaves the test
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    own = tracing.start()
    assert own.owned
    assert own.provider.resource.attributes["service.name"] == "contrastive"  # type: ignore[attr-defined]
    own.close()

    monkeypatch.setenv("OTEL_SERVICE_NAME", "embeddings-eu")
    named = tracing.start()
    assert named.provider.resource.attributes["service.name"] == "embeddings-eu"  # type: ignore[attr-defined]
    named.close()

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(tracing.TracingError, match="otlp, console or none"):
        tracing.start()


def test_a_configured_provider_is_used_and_left_open(
    monkeypatch: pytest.MonkeyPatch, spans: Spans
) -> None:
    monkeypatch.setattr("opentelemetry.trace.get_tracer_provider", lambda: spans.provider)
    used = tracing.start()
    assert used.provider is spans.provider and not used.owned


def test_an_error_is_recorded_and_its_log_record_names_the_request_and_trace(
    traced_app: TracedApp, spans: Spans
) -> None:
    with kept_records(RequestIdFilter(), TraceIdsFilter()) as records:
        encoder = BreakableEncoder()
        client = traced_app(encoder=encoder)
        encoder.broken = True
        r = client.post("/v1/embed/text", json={"texts": ["x"]}, headers={"X-Request-ID": "r-1"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "r-1"

    batch = spans.one("batcher.batch")
    assert batch.status.status_code is StatusCode.ERROR
    assert batch.status.description == "RuntimeError: the text tower broke"
    assert spans.one("model.forward").status.status_code is StatusCode.ERROR
    server = spans.one("POST /v1/embed/text")
    assert server.status.status_code is StatusCode.ERROR
    assert server.context is not None

    (record,) = [rec for rec in records if rec.getMessage() == "unhandled error"]
    assert record.exc_info is not None
    assert record.request_id == "r-1"  # type: ignore[attr-defined]
    assert record.trace_id == format(server.context.trace_id, "032x")  # type: ignore[attr-defined]
