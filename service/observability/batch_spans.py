"""The batcher's spans (contrastkit.service.runtime.batcher): how long a request's items waited in
the queue, each batch, and the model's forward call in it. Imported only when tracing is on.

A batch mixes requests, and a big request's items go into several batches, so neither can
be the other's parent. As OpenTelemetry advises for batch processing, a batch is a trace
of its own whose span links to the span of every request it serves, and each request's
queue-wait span (a child of the request's span) links back to the batches its items went
into: from a slow request a trace viewer leads to the batches it waited for, and from a
batch to the requests in it.

    request span (FastAPI's server span)
      batcher.queue_wait   submitted -> first items taken into a batch; links: its batches
    batcher.batch          gathered -> rows handed back; links: the requests it serves
      model.forward        the model's call alone, in the model thread
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, Status, StatusCode, Tracer

T = TypeVar("T")


@dataclass(eq=False)
class JobTrace:
    """What is traced of one job (a request's items in one batcher): the span it was
    submitted in, when, when its first items were taken, and the batches they went into."""

    origin: SpanContext
    queued_ns: int
    taken_ns: int | None = None
    batches: list[SpanContext] = field(default_factory=list)


class BatchSpans:
    """The spans of one batcher: a model's texts or its images."""

    def __init__(self, tracer: Tracer, modality: str, model_id: str) -> None:
        self.tracer = tracer
        self.attributes = {"contrastive.modality": modality, "contrastive.model": model_id}

    def job(self) -> JobTrace:
        """A job submitted now, by the request whose span is current."""
        return JobTrace(trace.get_current_span().get_span_context(), time.time_ns())

    def end_job(self, job: JobTrace, items: int) -> None:
        """Record the job's queue wait, once it ended: until its first items were taken
        into a batch, or until now if none was (it failed, or its client left)."""
        span = self.tracer.start_span(
            "batcher.queue_wait",
            start_time=job.queued_ns,
            links=[Link(b) for b in job.batches],
            attributes={
                **self.attributes,
                "contrastive.items": items,
                "contrastive.batches": len(job.batches),
            },
        )
        span.end(end_time=job.taken_ns if job.taken_ns is not None else time.time_ns())

    def batch(self, jobs: Sequence[tuple[JobTrace, int]]) -> Span:
        """Start the span of a batch just gathered: (job, its items in it) for each job."""
        now = time.time_ns()
        span = self.tracer.start_span(
            "batcher.batch",
            context=Context(),  # a root: not the child of whichever task started the loop
            links=[
                Link(job.origin, {"contrastive.items": n}) for job, n in jobs if job.origin.is_valid
            ],
            attributes={
                **self.attributes,
                "contrastive.batch.size": sum(n for _, n in jobs),
                "contrastive.batch.requests": len(jobs),
            },
            start_time=now,
        )
        ctx = span.get_span_context()
        for job, _ in jobs:
            if job.taken_ns is None:
                job.taken_ns = now
            job.batches.append(ctx)
        return span

    def run_model(self, batch: Span, fn: Callable[[list[Any]], T], items: list[Any]) -> T:
        """`fn(items)` in a span of its own, a child of `batch`: called in the model thread,
        so that it times the forward call alone, not the wait for the thread."""
        with self.tracer.start_as_current_span(
            "model.forward",
            context=trace.set_span_in_context(batch),
            attributes={**self.attributes, "contrastive.batch.size": len(items)},
        ):
            return fn(items)

    @staticmethod
    def end_batch(span: Span, error: BaseException | None = None) -> None:
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()
