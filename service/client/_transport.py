"""What travels: the HTTP clients the classes accept, one request, and error bodies.

`Call` pairs a `Request` with the function that reads its response; the operations in
`_requests` build Calls and the two client classes only send them, so sync and async
cannot drift apart. `Retry` is the one retry rule both follow: a 503 or 429 answer is
sent again after the server's Retry-After (seconds) or an exponential backoff with jitter,
within a number of retries and a total wait. Nothing else is retried: connection
failures and timeouts propagate as httpx errors (the request may have run), and the
timeout is the HTTP client's own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from service.client.types import ServiceError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_WAIT",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "AsyncHttpClient",
    "Call",
    "Files",
    "HttpClient",
    "Request",
    "Response",
    "Retry",
    "auth_headers",
    "json_body",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 3
DEFAULT_MAX_WAIT = 10.0
# The answers that say "not now, the request was not run": the server sheds load (full
# queue), or its model is still loading, before it processes anything.
RETRY_STATUSES = frozenset({429, 503})

T = TypeVar("T")

# Structural protocols, so that httpx.Client and clients of compatible libraries both fit:
# starlette's TestClient subclasses httpx2.Client when httpx2 is installed, which is no
# httpx.Client.

Files = list[tuple[str, tuple[str, bytes, str]]]
"""Multipart files as httpx takes them: (field, (filename, content, content type))."""


class Response(Protocol):
    """The part of httpx.Response the clients read."""

    @property
    def status_code(self) -> int: ...
    @property
    def is_success(self) -> bool: ...
    @property
    def text(self) -> str: ...
    @property
    def reason_phrase(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def json(self, **kwargs: Any) -> Any: ...


class HttpClient(Protocol):
    """A blocking HTTP client like httpx.Client (or FastAPI's TestClient)."""

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = ...,
        data: dict[str, str] | None = ...,
        files: Files | None = ...,
        headers: dict[str, str] | None = ...,
    ) -> Response: ...
    def close(self) -> None: ...


class AsyncHttpClient(Protocol):
    """An asyncio HTTP client like httpx.AsyncClient."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = ...,
        data: dict[str, str] | None = ...,
        files: Files | None = ...,
        headers: dict[str, str] | None = ...,
    ) -> Response: ...
    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Request:
    """Everything httpx needs for one call but the headers (those are the client's)."""

    method: str
    path: str
    json: Any = None
    data: dict[str, str] | None = None
    files: Files | None = None


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call: the request to send and how to read the response into a result."""

    request: Request
    parse: Callable[[Response], T]
    # False where a 503 is itself the answer (GET /readyz while loading): never resent
    retry: bool = True


@dataclass(frozen=True)
class Retry:
    """When to send a call again after a 503/429 answer, and after how long.

    `retries`: resends at most (0: never); `max_wait`: seconds slept at most over all of
    them. The wait is the answer's Retry-After (seconds) when it has one, else
    `backoff` x 2**attempt, jittered to between half and all of that (so that clients shed
    together do not come back together). A wait that would pass `max_wait` is not slept:
    the answer is returned as it is (the caller raises its ServiceError).
    """

    retries: int = DEFAULT_RETRIES
    max_wait: float = DEFAULT_MAX_WAIT
    backoff: float = 0.25

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if not self.max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {self.max_wait}")

    def delay(
        self, call: Call[Any], response: Response, attempt: int, waited: float
    ) -> float | None:
        """Seconds to sleep before resending `call` (answered `response` on try `attempt`,
        0-based, after `waited` seconds asleep so far), or None to stop here."""
        if not call.retry or response.status_code not in RETRY_STATUSES:
            return None
        if attempt >= self.retries:
            return None
        wait = _retry_after(response)
        if wait is None:
            step = self.backoff * 2**attempt
            wait = random.uniform(step / 2, step)
        if waited + wait > self.max_wait:
            return None
        return wait


def _retry_after(response: Response) -> float | None:
    """Retry-After in seconds; None when absent or an HTTP date (our server sends seconds)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def json_body(read: Callable[[Any], T]) -> Callable[[Response], T]:
    """A response parser: `read` the decoded JSON of a 2xx answer; raise ServiceError for
    any other."""

    def parse(response: Response) -> T:
        if not response.is_success:
            raise _error(response)
        return read(response.json())

    return parse


def _error(response: Response) -> ServiceError:
    """A non-2xx response -> ServiceError, from {"error": {...}} or else the raw text."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        message = err.get("message")
        return ServiceError(
            response.status_code,
            err["code"],
            message if isinstance(message, str) else str(message),
            err.get("detail"),
        )
    text = response.text.strip() or response.reason_phrase
    return ServiceError(response.status_code, "http_error", text, body)
