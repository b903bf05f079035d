"""Dynamic batching: concurrent requests share one forward pass.

Requests put jobs (lists of ready inputs) on a bounded queue; one loop per modality
gathers jobs until `max_batch` items or `max_wait_ms`, runs the model in a dedicated
thread (so the event loop never blocks), and hands each job its rows of the result.
While the model runs, the next batch fills up, so under load batches are full and no
time is spent waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


class QueueFullError(RuntimeError):
    """The batcher already holds `max_queue` items; the caller should retry later."""


@dataclass
class _Job(Generic[T]):
    items: Sequence[T]
    future: asyncio.Future[torch.Tensor]


class Batcher(Generic[T]):
    """Gathers items from concurrent `submit` calls into batches for `fn`.

    fn: list of n items -> [n, d] tensor; called in `executor`, at most `max_batch`
    items at a time.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], torch.Tensor],
        executor: Executor,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.fn = fn
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.pending = 0  # items queued or running
        self._queue: asyncio.Queue[_Job[T]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, items: Sequence[T]) -> torch.Tensor:
        """n items -> [n, d]; raises QueueFullError at once when the queue is full."""
        if not items:
            raise ValueError("nothing to submit")
        if self.pending + len(items) > self.max_queue and self.pending > 0:
            raise QueueFullError(f"{self.pending} items queued")
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        self.pending += len(items)
        self._queue.put_nowait(_Job(items, future))
        try:
            return await future
        finally:
            self.pending -= len(items)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather(loop)
            live = [j for j in jobs if not j.future.done()]  # drop requests whose client left
            if not live:
                continue
            items = [x for j in live for x in j.items]
            try:
                out = await loop.run_in_executor(self.executor, self._run, items)
            except Exception as e:
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            start = 0
            for j in live:
                n = len(j.items)
                if not j.future.done():
                    j.future.set_result(out[start : start + n])
                start += n

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> list[_Job[T]]:
        jobs = [await self._queue.get()]
        count = len(jobs[0].items)
        deadline = loop.time() + self.max_wait
        while count < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            jobs.append(job)
            count += len(job.items)
        return jobs

    def _run(self, items: list[T]) -> torch.Tensor:
        """Runs in the model thread; splits oversize requests into max_batch chunks."""
        outs = []
        for i in range(0, len(items), self.max_batch):
            chunk = items[i : i + self.max_batch]
            if self.on_batch:
                self.on_batch(len(chunk))
            outs.append(self.fn(chunk))
        return torch.cat(outs) if len(outs) > 1 else outs[0]
