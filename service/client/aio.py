"""`AsyncContrastiveClient`: the asyncio client. Its API methods are the operations of
`_requests` as coroutines, each sent through `_run`; see that module for what they do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import httpx

from contrastkit.service.client import _requests as ops
from contrastkit.service.client._transport import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_WAIT,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    AsyncHttpClient,
    Call,
    Response,
    Retry,
    auth_headers,
    unreachable,
)

P = ParamSpec("P")
T = TypeVar("T")


def _method(
    operation: Callable[P, Call[T]],
) -> Callable[Concatenate[AsyncContrastiveClient, P], Coroutine[Any, Any, T]]:
    """`operation` as a coroutine method that sends its Call and returns the parsed result."""

    async def method(self: AsyncContrastiveClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(operation(*args, **kwargs))

    ops.adopt(method, operation, "AsyncContrastiveClient")
    return method


class AsyncContrastiveClient:
    """Asyncio client over httpx.AsyncClient; the same methods as ContrastiveClient, as
    coroutines. `http` reuses an existing httpx.AsyncClient or the like (see
    AsyncHttpClient), which `aclose()` leaves open. `retries`/`max_wait`: as for
    ContrastiveClient (503/429 sent again, asleep at most `max_wait` seconds in all).

    Image paths are read synchronously when a request is built (local files, small).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        retries: int = DEFAULT_RETRIES,
        max_wait: float = DEFAULT_MAX_WAIT,
        http: AsyncHttpClient | None = None,
    ) -> None:
        self._owns_http = http is None
        self._http: AsyncHttpClient = (
            http
            if http is not None
            else httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)
        )
        self._headers = auth_headers(api_key)
        self._retry = Retry(retries, max_wait)

    async def _run(self, call: Call[T]) -> T:
        waited = 0.0
        attempt = 0
        while True:
            response = await self._send(call)
            wait = self._retry.delay(call, response, attempt, waited)
            if wait is None:
                return call.parse(response)
            await asyncio.sleep(wait)
            waited += wait
            attempt += 1

    async def _send(self, call: Call[T]) -> Response:
        req = call.request
        try:
            return await self._http.request(
                req.method,
                req.path,
                json=req.json,
                data=req.data,
                files=req.files,
                headers=self._headers,
            )
        except httpx.TransportError as e:  # no answer: say where, what, and what to check
            raise unreachable(e) from e

    embed_texts = _method(ops.embed_texts)
    embed_images = _method(ops.embed_images)
    classify = _method(ops.classify)
    models = _method(ops.models)
    ready = _method(ops.ready)
    create_collection = _method(ops.create_collection)
    list_collections = _method(ops.list_collections)
    describe_collection = _method(ops.describe_collection)
    delete_collection = _method(ops.delete_collection)
    add = _method(ops.add)
    delete_items = _method(ops.delete_items)
    get_item = _method(ops.get_item)
    search = _method(ops.search)
    search_many = _method(ops.search_many)
    list_aliases = _method(ops.list_aliases)
    set_alias = _method(ops.set_alias)
    remove_alias = _method(ops.remove_alias)
    load_model = _method(ops.load_model)
    start_migration = _method(ops.start_migration)
    migration = _method(ops.migration)
    cancel_migration = _method(ops.cancel_migration)

    async def aclose(self) -> None:
        """Close the underlying httpx.AsyncClient, unless it was passed in as `http`."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
