"""Fixtures of the observability tests: spans kept in memory (never exported over a
network), and apps with tracing on that make them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, wait_ready


class BreakableEncoder(FakeEncoder):
    """Its text batches fail once `broken` is set (after the warm-up): a request that
    embeds texts then gets a 500, and the error is logged."""

    broken = False

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        if self.broken:
            raise RuntimeError("the text tower broke")
        return super()._text_forward(texts)


class Spans:
    """A tracer provider whose finished spans are kept here, in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span

    def clear(self) -> None:
        self.exporter.clear()


@pytest.fixture
def spans() -> Spans:
    return Spans()


TracedApp = Callable[..., TestClient]


@pytest.fixture
def traced_app(spans: Spans, tmp_path: Path) -> Iterator[TracedApp]:
    """make(encoder=None, **settings) -> a started TestClient over `encoder` (a
    FakeEncoder), tracing into `spans` (the spans of its start-up cleared). Server errors
    are answered 500, not raised in the test."""
    clients: list[TestClient] = []

    def make(encoder: FakeEncoder | None = None, **settings: object) -> TestClient:
        s = Settings(tracing=True, collections_dir=str(tmp_path / "collections"), **settings)
        app = create_app(s, encoder=encoder or FakeEncoder(), tracer_provider=spans.provider)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        spans.clear()
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@contextlib.contextmanager
def kept_records(*filters: logging.Filter) -> Iterator[list[logging.LogRecord]]:
    """The records of the service's logger while the block runs, as a handler with
    `filters` sees them (the filters add the request and trace ids)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    for f in filters:
        keep.addFilter(f)
    logger = logging.getLogger("contrastive.service")
    logger.addHandler(keep)
    try:
        yield records
    finally:
        logger.removeHandler(keep)
