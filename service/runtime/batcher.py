"""Dynamic batching: concurrent requests share one forward pass, and overload is refused
at once instead of queued.

Admission. A job is admitted (`reserve`) before any work is done on its items, so a
refusal costs microseconds: it is refused with QueueFullError when the admitted items
would exceed `max_queue`, or when it would wait longer than `max_queue_wait_ms` (its
items, and what the jobs admitted before it get served meanwhile, at the measured service
rate; and, for images, the time until they are decoded, which the caller estimates and
passes as `before`) while `always_admit` jobs or more are admitted already. The rate is a decayed
average over recent batches (`ServiceRate`); until the first batch is measured only the
item limit applies. A job is never refused by an empty batcher (it could never succeed
otherwise).

Why the wait limit spares the first `always_admit` jobs: clients that wait for each
answer before sending again (a closed loop, as most clients are) cannot build an unbounded
queue: c of them keep at most c jobs admitted. Refusing them does not shorten anyone's
wait; it turns waiting into immediate retries, whose refusals then keep the server busy
(congestion collapse). Load that does grow without bound (clients that send whatever the
answers) soon passes `always_admit` jobs, and from there the wait limit sheds it.

Batching. One loop per modality gathers items until `max_batch` or `max_wait_ms`, runs
the model in a dedicated thread (so the event loop never blocks), and hands each job its
rows. Jobs are served round-robin in chunks of at most `max_batch` items: a job of 2,000
texts takes one batch, then every other waiting job gets its turn, then its next chunk.
A job whose caller went away (its awaiting coroutine was cancelled) leaves the queue at
once, so no batch is run for a client that left.

Retirement. A batcher whose model was unloaded or replaced is retired (`retire`): it goes
on serving whatever it is sent, but its loop ends whenever its queue is empty, so that
nothing but the requests still using it keeps the batcher (and the model its function
holds) alive. A request that resolved the model before the swap and submits only later
starts the loop again: nothing it was promised is dropped.

Tracing. With `spans` (contrastkit.service.observability.batch_spans, when tracing is on) each job
records its wait in the queue, and each batch and model call is a span; without, the
loop pays one `is None` test per job and per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

import torch

if TYPE_CHECKING:  # imported only when tracing is on (it imports OpenTelemetry)
    from opentelemetry.trace import Span

    from contrastkit.service.observability.batch_spans import BatchSpans, JobTrace

T = TypeVar("T")


class QueueFullError(RuntimeError):
    """The batcher is full (by items or by estimated wait); retry in `retry_after` s."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(excess: float | None) -> int:
    """The Retry-After of a refusal: whole seconds (1 to 60) until the job would fit, from
    how far past the limit it is (seconds of work at the measured rate; None: unknown)."""
    return 1 if excess is None else min(60, max(1, math.ceil(excess)))


class ServiceRate:
    """Items per second the model gets through: decayed sums of items and seconds over
    recent batches, so one batch of 64 weighs 64 times one batch of 1 and the estimate
    follows a change of load within a few batches."""

    def __init__(self, decay: float = 0.8) -> None:
        self.decay = decay
        self._items = 0.0
        self._seconds = 0.0

    def add(self, items: int, seconds: float) -> None:
        self._items = self._items * self.decay + items
        self._seconds = self._seconds * self.decay + max(seconds, 1e-6)

    @property
    def per_second(self) -> float | None:
        """The estimate, or None before the first batch."""
        return self._items / self._seconds if self._seconds > 0 else None


class Reservation:
    """Room for `size` items in a batcher, taken at admission and given back as the
    items are embedded (`consume`) or all at once when the job ends (`release`)."""

    def __init__(self, size: int, give_back: Callable[[int, bool], None]) -> None:
        self.size = size
        self.left = size
        self._give_back = give_back

    def consume(self, n: int) -> None:
        n = min(n, self.left)  # a released reservation has nothing left to give back
        self.left -= n
        self._give_back(n, n > 0 and self.left == 0)

    def release(self) -> None:
        """Give back what is left; idempotent."""
        self.consume(self.left)


# identity: the queue removes a job by `is`; no repr: deque.remove of a job no longer
# queued builds its ValueError message from repr(job), which would print the tensors
@dataclass(eq=False, repr=False)
class _Job(Generic[T]):
    items: Sequence[T]
    future: asyncio.Future[torch.Tensor]
    reservation: Reservation
    sent: int = 0  # items already handed to a batch
    outs: list[torch.Tensor] = field(default_factory=list)  # their rows, in order
    trace: JobTrace | None = None  # when tracing is on


@dataclass
class _Segment(Generic[T]):
    """Items [start, stop) of one job, in one batch."""

    job: _Job[T]
    start: int
    stop: int


class Batcher(Generic[T]):
    """Gathers items from concurrent `submit` calls into batches for `fn`.

    fn: list of n items -> [n, d] tensor; called in `executor`, at most `max_batch`
    items at a time. `on_batch(items)` before each batch runs, `on_batch_seconds(s)`
    after each that succeeded (metrics). `always_admit`: jobs admitted whatever their
    estimated wait (the module's docstring says why). `pending`: items admitted and not
    yet embedded; `jobs`: jobs admitted and not yet ended.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], torch.Tensor],
        executor: Executor,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        max_queue_wait_ms: float = 3000.0,
        on_batch: Callable[[int], None] | None = None,
        always_admit: int = 0,
        on_batch_seconds: Callable[[float], None] | None = None,
        spans: BatchSpans | None = None,
    ) -> None:
        self.fn = fn
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.max_queue_wait = max_queue_wait_ms / 1000.0
        self.always_admit = always_admit
        self.on_batch = on_batch
        self.on_batch_seconds = on_batch_seconds
        self.spans = spans
        self.pending = 0
        self.jobs = 0
        self.rate = ServiceRate()
        self._jobs: deque[_Job[T]] = deque()  # jobs with items not yet sent, in turn order
        self._wake = asyncio.Event()  # set when a job joins the queue
        self._task: asyncio.Task[None] | None = None
        self._retired = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    @property
    def running(self) -> bool:
        """Whether the loop runs (a retired batcher's stops once its queue is empty)."""
        return self._task is not None and not self._task.done()

    def retire(self) -> None:
        """Its model is no longer served: the loop ends as soon as the queue is empty (now,
        if it is), and starts again only for a job submitted later."""
        self._retired = True
        self._wake.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- admission ----------------------------------------------------------------------
    def estimated_wait(self, n: int, before: float = 0.0) -> float | None:
        """Seconds until a new job of n items would be embedded at the measured rate (None
        before the first batch is measured): its own items, and what is served before its
        last chunk. Jobs take turns, so for each of its turns every admitted job gets one
        chunk of `max_batch` at most: a job behind a big one waits for a chunk of it, not
        for all of it. Bounded by every admitted item.

        `before`: seconds until the job's items are ready to join the queue (images still
        to be decoded, behind those admitted before them): its last chunk then still has
        to run, so the job waits at least that long plus the time of that chunk. (The
        items ahead of it that are still decoding are counted in `pending` already.)"""
        rate = self.rate.per_second
        if rate is None:
            return None
        turns = math.ceil(n / self.max_batch)
        ahead = min(self.pending, self.jobs * turns * self.max_batch)
        last_chunk = min(n, self.max_batch)
        return max((ahead + n) / rate, before + last_chunk / rate)

    def check(self, n: int, before: float = 0.0) -> None:
        """QueueFullError if a job of n items would be refused now (`reserve` without
        reserving: a request can be refused before its body is read)."""
        if self.pending == 0:  # an empty batcher takes any job (else it never could run)
            return
        if self.pending + n > self.max_queue:
            rate = self.rate.per_second
            excess = (self.pending + n - self.max_queue) / rate if rate else None
            raise QueueFullError(
                f"{self.pending} items queued, the limit is {self.max_queue}",
                _retry_after(excess),
            )
        wait = self.estimated_wait(n, before) if self.jobs >= self.always_admit else None
        if wait is not None and wait > self.max_queue_wait:
            raise QueueFullError(
                f"it would wait about {wait:.1f} s, the limit is {self.max_queue_wait:g} s",
                _retry_after(wait - self.max_queue_wait),
            )

    def reserve(self, n: int, before: float = 0.0) -> Reservation:
        """Admit a job of n items, or raise QueueFullError at once. Call it before doing
        any work on the items (decoding), and pass the reservation to `submit`. `before`:
        as for estimated_wait."""
        if n < 1:
            raise ValueError("nothing to submit")
        self.check(n, before)
        self.pending += n
        self.jobs += 1
        return Reservation(n, self._give_back)

    def _give_back(self, n: int, ended: bool) -> None:
        self.pending -= n
        if ended:
            self.jobs -= 1

    # -- jobs ---------------------------------------------------------------------------
    async def submit(
        self, items: Sequence[T], reservation: Reservation | None = None
    ) -> torch.Tensor:
        """n items -> [n, d]. Without a reservation, admits the job first (QueueFullError
        at once when full). Cancelling the caller drops the job's unsent chunks."""
        if not items:
            raise ValueError("nothing to submit")
        res = reservation if reservation is not None else self.reserve(len(items))
        if res.left != len(items):
            raise ValueError(f"a reservation for {res.left} items, {len(items)} submitted")
        job: _Job[T] = _Job(items, asyncio.get_running_loop().create_future(), res)
        if self.spans is not None:
            job.trace = self.spans.job()
        self._jobs.append(job)
        self._wake.set()
        if self._retired and not self.running:  # a late job of a request begun before
            self.start()
        try:
            return await job.future
        finally:
            res.release()
            with contextlib.suppress(ValueError):  # not queued any more: all of it was sent
                self._jobs.remove(job)
            if self.spans is not None and job.trace is not None:
                self.spans.end_job(job.trace, len(items))

    # -- the loop -----------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather(loop)
            if batch is None:  # retired, and nothing queued
                return
            if not batch:
                continue
            items = [x for s in batch for x in s.job.items[s.start : s.stop]]
            if self.on_batch:
                self.on_batch(len(items))
            span = self._batch_span(batch)
            started = loop.time()
            try:
                # the time includes waiting for the model thread, which other modalities
                # share: what is measured is the rate this batcher actually gets
                out = await self._run(loop, items, span)
                if len(out) != len(items):
                    raise RuntimeError(f"the model returned {len(out)} rows for {len(items)}")
            except Exception as e:
                for s in batch:
                    s.job.reservation.consume(s.stop - s.start)
                    if not s.job.future.done():
                        s.job.future.set_exception(e)
                if self.spans is not None and span is not None:
                    self.spans.end_batch(span, e)
                continue
            took = loop.time() - started
            self.rate.add(len(items), took)
            if self.on_batch_seconds:
                self.on_batch_seconds(took)
            self._deliver(batch, out)
            if self.spans is not None and span is not None:
                self.spans.end_batch(span)

    def _batch_span(self, batch: list[_Segment[T]]) -> Span | None:
        """The span of a batch just gathered (None when tracing is off)."""
        if self.spans is None:
            return None
        return self.spans.batch(
            [(s.job.trace, s.stop - s.start) for s in batch if s.job.trace is not None]
        )

    def _run(
        self, loop: asyncio.AbstractEventLoop, items: list[T], span: Span | None
    ) -> asyncio.Future[torch.Tensor]:
        """The model's call on `items` in the executor (in a span of `span`'s, if any)."""
        if self.spans is None or span is None:
            return loop.run_in_executor(self.executor, self.fn, items)
        return loop.run_in_executor(self.executor, self.spans.run_model, span, self.fn, items)

    def _deliver(self, batch: list[_Segment[T]], out: torch.Tensor) -> None:
        """Hand each segment its rows of `out` [items in batch, d]; a job whose last
        segment this was gets its result."""
        row = 0
        for s in batch:
            n = s.stop - s.start
            s.job.reservation.consume(n)
            if not s.job.future.done():  # its client may have left meanwhile
                s.job.outs.append(out[row : row + n])
                if s.stop == len(s.job.items):
                    outs = s.job.outs
                    s.job.future.set_result(torch.cat(outs) if len(outs) > 1 else outs[0])
            row += n

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> list[_Segment[T]] | None:
        """Wait for work, then take items until `max_batch` or `max_wait` has passed;
        None when the batcher is retired and has nothing queued."""
        while not self._jobs:
            if self._retired:
                return None
            self._wake.clear()
            await self._wake.wait()
        deadline = loop.time() + self.max_wait
        batch: list[_Segment[T]] = []
        count = 0
        while True:
            count += self._take(batch, self.max_batch - count)
            remaining = deadline - loop.time()
            if count >= self.max_batch or remaining <= 0:
                return batch
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return batch

    def _take(self, batch: list[_Segment[T]], room: int) -> int:
        """Append up to `room` items to `batch`, one job's turn at a time; a job with
        items left goes to the back of the queue. -> how many were taken."""
        taken = 0
        while room > 0 and self._jobs:
            job = self._jobs.popleft()
            if job.future.done():  # its client left, or an earlier chunk failed
                continue
            n = min(room, len(job.items) - job.sent)
            batch.append(_Segment(job, job.sent, job.sent + n))
            job.sent += n
            room -= n
            taken += n
            if job.sent < len(job.items):
                self._jobs.append(job)
        return taken
