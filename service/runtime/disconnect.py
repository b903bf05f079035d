"""No work for a client that has gone: a request registers how to wait for its client to
disconnect (`watch`, called by the API layer once per request), and `while_client_waits`
runs one piece of work (an embedding) that is cancelled when the client leaves first;
the batcher then drops the job's queued chunks.

Nothing HTTP here: the API layer hands in a coroutine function that returns when the
client has gone (contrastkit.service.api.deps.watch_disconnect reads the ASGI channel for it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TypeVar

from contrastkit.service.domain_errors import DomainError

T = TypeVar("T")

# Set per request; each request runs in a task of its own, so this never leaks between them.
_WAIT_GONE: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "wait_client_gone", default=None
)


class ClientGoneError(DomainError):
    """The client closed its connection before its answer was ready; nobody reads it."""


def watch(wait_gone: Callable[[], Awaitable[None]]) -> None:
    """For the current request: `wait_gone()` returns once its client has disconnected.
    It is awaited only while work runs, after the request body has been read."""
    _WAIT_GONE.set(wait_gone)


async def while_client_waits(work: Awaitable[T]) -> T:
    """`await work`, unless the current request's client leaves first: then the work is
    cancelled and ClientGoneError raised (the request ends quietly, no 500 is logged)."""
    wait_gone = _WAIT_GONE.get()
    if wait_gone is None:
        return await work
    job = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(wait_gone())
    try:
        await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        job.cancel()
        gone.cancel()
        raise
    if job.done() or not _has_left(gone):
        gone.cancel()
        return await job
    job.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await job
    raise ClientGoneError(
        "client_closed_request", "the client closed the connection before the answer was ready"
    )


def _has_left(gone: asyncio.Future[None]) -> bool:
    """The watcher ended by seeing the client leave (not by failing)."""
    return gone.done() and not gone.cancelled() and gone.exception() is None
