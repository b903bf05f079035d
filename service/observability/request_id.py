"""A request id for every request: the client's `X-Request-ID` when it sends a usable one,
else a new one; answered in `X-Request-ID` on every response, errors included, and put on
every log record emitted while the request is handled (`RequestIdFilter`).

It is always on, so it is kept cheap: one pass over the request headers, one regular
expression, one context variable, and a header added to the response start.
"""

from __future__ import annotations

import logging
import os
import re
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
# What a client's id may be: 1-128 visible ASCII characters. Anything else (spaces,
# control characters, a megabyte of text) is replaced, so that an id can go into a log line
# or a header unescaped and never splits or forges either.
VALID = re.compile(rb"[\x21-\x7e]{1,128}")

# Set for the time a request is handled; each request runs in a task of its own (or, in
# process, is reset when it ends), so an id never leaks into another request's records.
_REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def current() -> str | None:
    """The id of the request being handled, or None outside a request."""
    return _REQUEST_ID.get()


def new_id() -> str:
    """32 random hex digits: a uuid4's size and randomness, at a third of uuid4()'s cost
    (no UUID object is built for it)."""
    return os.urandom(16).hex()


def choose(sent: bytes | None) -> str:
    """The client's id when it is valid, else a new one."""
    if sent is not None and VALID.fullmatch(sent):
        return sent.decode("ascii")
    return new_id()


class RequestIdMiddleware:
    """Pure ASGI: sets the request id for the request and answers it in `X-Request-ID`.

    contrastkit.service.app puts it outside Starlette's ServerErrorMiddleware, so that a 500 from an
    unhandled error carries the id too, and the error's log record names it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = None
        for k, v in scope["headers"]:
            if k == HEADER:
                sent = v
        request_id = choose(sent)
        header = (HEADER, request_id.encode("ascii"))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                # appended, not searched for: nothing inside sets X-Request-ID itself
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = _REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            _REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts `request_id` (None outside a request) on every record its handler emits.

    A handler's filter, not a logger's: a logger's filters do not see the records that
    propagate to it from other loggers (uvicorn's, the index's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _REQUEST_ID.get()
        return True
