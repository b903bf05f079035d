"""`ContrastiveClient`: the blocking client. Its API methods are the operations of
`_requests`, each sent through `_run`; see that module for what they do."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Concatenate, ParamSpec, Self, TypeVar

import httpx

from service.client import _requests as ops
from service.client._transport import (
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    Call,
    HttpClient,
    auth_headers,
)

P = ParamSpec("P")
T = TypeVar("T")


def _method(
    operation: Callable[P, Call[T]],
) -> Callable[Concatenate[ContrastiveClient, P], T]:
    """`operation` as a method that sends its Call and returns the parsed result."""

    def method(self: ContrastiveClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(operation(*args, **kwargs))

    ops.adopt(method, operation, "ContrastiveClient")
    return method


class ContrastiveClient:
    """Blocking client over httpx.Client.

    Pass `http` to reuse an existing client (an httpx.Client, FastAPI's TestClient, or
    anything with the same `request`/`close`, see HttpClient); its base URL, timeout and
    transport are then used as they are, and `close()` leaves it open. Otherwise one is
    created from `base_url`, `timeout` (seconds) and `transport`, and closed by `close()` /
    leaving the `with` block.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        *,
        http: HttpClient | None = None,
    ) -> None:
        self._owns_http = http is None
        self._http: HttpClient = (
            http
            if http is not None
            else httpx.Client(base_url=base_url, timeout=timeout, transport=transport)
        )
        self._headers = auth_headers(api_key)

    def _run(self, call: Call[T]) -> T:
        req = call.request
        response = self._http.request(
            req.method,
            req.path,
            json=req.json,
            data=req.data,
            files=req.files,
            headers=self._headers,
        )
        return call.parse(response)

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

    def close(self) -> None:
        """Close the underlying httpx.Client, unless it was passed in as `http`."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
