"""The batcher's spans (contrastkit.service.observability.batch_spans) where batches mix requests: a
batch links to every request it serves, a request's queue wait to every batch its items
went into, and the model's call is a child of its batch."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from opentelemetry.sdk.trace import ReadableSpan

from contrastkit.service.observability.tracing import Tracing
from contrastkit.service.runtime.batcher import Batcher
from tests.helpers import item_rows
from tests.service.observability.conftest import Spans


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def _links(span: ReadableSpan) -> list[int]:
    return sorted(link.context.span_id for link in span.links)


def test_one_batch_serves_two_requests_and_links_to_both(
    spans: Spans, pool: ThreadPoolExecutor
) -> None:
    tracer = spans.provider.get_tracer("test")

    async def main() -> None:
        b: Batcher[int] = Batcher(
            item_rows,
            pool,
            8,
            max_wait_ms=200,
            max_queue=100,
            spans=Tracing(spans.provider).batcher("text", "m"),
        )
        b.start()

        async def request(name: str, items: list[int]) -> None:
            with tracer.start_as_current_span(name):
                await b.submit(items)

        await asyncio.gather(request("A", [1, 2]), request("B", [3]))
        await b.stop()

    asyncio.run(main())
    a, b_ = spans.one("A"), spans.one("B")
    batch = spans.one("batcher.batch")
    assert _links(batch) == sorted([_id(a), _id(b_)])
    assert batch.attributes is not None
    assert batch.attributes["contrastive.batch.size"] == 3
    assert batch.attributes["contrastive.batch.requests"] == 2
    waits = {w.parent.span_id: w for w in spans.named("batcher.queue_wait") if w.parent is not None}
    assert set(waits) == {_id(a), _id(b_)}
    assert all(_links(w) == [_id(batch)] for w in waits.values())
    forward = spans.one("model.forward")
    assert forward.parent is not None and forward.parent.span_id == _id(batch)


def test_a_request_split_over_batches_links_to_each(spans: Spans, pool: ThreadPoolExecutor) -> None:
    tracer = spans.provider.get_tracer("test")

    async def main() -> None:
        b: Batcher[int] = Batcher(
            item_rows,
            pool,
            2,
            max_wait_ms=0,
            max_queue=100,
            spans=Tracing(spans.provider).batcher("image", "m"),
        )
        b.start()
        with tracer.start_as_current_span("big"):
            out = await b.submit([1, 2, 3, 4, 5])
        assert out[:, 0].tolist() == [1, 2, 3, 4, 5]
        await b.stop()

    asyncio.run(main())
    batches = spans.named("batcher.batch")
    assert [s.attributes["contrastive.batch.size"] for s in batches if s.attributes] == [2, 2, 1]
    wait = spans.one("batcher.queue_wait")
    assert _links(wait) == sorted(_id(s) for s in batches)
    assert wait.attributes is not None and wait.attributes["contrastive.batches"] == 3
    # the wait ends when the first items are taken, as the first batch starts
    assert wait.end_time == min(s.start_time or 0 for s in batches)
