"""`ContrastiveClient`: the blocking client. Its API methods are the operations of
`_requests`, each sent through `_run`; see that module for what they do."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Concatenate, ParamSpec, Self, TypeVar

import httpx

from contrastkit.service.client import _requests as ops
from contrastkit.service.client._transport import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_WAIT,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    Call,
    HttpClient,
    Response,
    Retry,
    auth_headers,
    unreachable,
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

    A 503 or 429 answer (the server shedding load, or its model still loading: the request
    was not run) is sent again up to `retries` times, after the answer's Retry-After or an
    exponential backoff with jitter, sleeping at most `max_wait` seconds in all; then its
    ServiceError is raised. `retries=0` turns this off.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        *,
        retries: int = DEFAULT_RETRIES,
        max_wait: float = DEFAULT_MAX_WAIT,
        http: HttpClient | None = None,
    ) -> None:
        self._owns_http = http is None
        self._http: HttpClient = (
            http
            if http is not None
            else httpx.Client(base_url=base_url, timeout=timeout, transport=transport)
        )
        self._headers = auth_headers(api_key)
        self._retry = Retry(retries, max_wait)

    def _run(self, call: Call[T]) -> T:
        waited = 0.0
        attempt = 0
        while True:
            response = self._send(call)
            wait = self._retry.delay(call, response, attempt, waited)
            if wait is None:
                return call.parse(response)
            time.sleep(wait)
            waited += wait
            attempt += 1

    def _send(self, call: Call[T]) -> Response:
        req = call.request
        try:
            return self._http.request(
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
