"""A route class whose JSON bodies are parsed by orjson, once.

FastAPI parses a declared body with the standard library's `json.loads` (through
Starlette's `Request.json`) before pydantic validates it. orjson parses the same bytes
several times faster, which matters on the embedding routes, whose bodies carry base64
images or thousands of texts. What orjson refuses (a body that is not JSON, and also
lone surrogates, NaN or Infinity, which the standard library reads) is read again by the
standard library, so such a body is answered exactly as before (a later check names the
bad text, or FastAPI's 422 says where the body broke). So is a body with an integer beyond
64 bits (a token id, say), which orjson would round to a float: a later check then names
it as sent. Only those bodies are read twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

from contrastkit.service.api.payload import holds_rounded_ints

_LONG_DIGITS = re.compile(rb"\d{19}")


class OrjsonRequest(Request):
    """A request whose `json()` is orjson's, cached like Starlette's."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = orjson.loads(body)
            except orjson.JSONDecodeError:
                self._json = json.loads(body)
            else:
                # 19 digits in a row may be such an integer: a scan at C speed, and the
                # parsed body is walked only when one is found
                if _LONG_DIGITS.search(body) and holds_rounded_ints(self._json):
                    self._json = json.loads(body)
        return self._json


class OrjsonRoute(APIRoute):
    """An APIRoute whose handler sees an OrjsonRequest (FastAPI's documented way to
    change how a route reads its request)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return handle
