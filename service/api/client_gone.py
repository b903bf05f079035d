"""The ASGI side of service.runtime.client: a request's client has gone when its receive
channel says `http.disconnect`."""

from __future__ import annotations

from fastapi import Request

from service.runtime import client


def watch_request(request: Request) -> None:
    """Let the embedders stop working for `request` when its client disconnects.

    The channel is read only while an embedding runs, after the route has read the whole
    body; what comes then is the disconnect (or, once the answer is sent, nothing)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    client.watch(gone)
