"""What travels: the HTTP clients the classes accept, one request, and error bodies.

`Call` pairs a `Request` with the function that reads its response; the operations in
`_requests` build Calls and the two client classes only send them, so sync and async
cannot drift apart. `Retry` is the one retry rule both follow: a 503 or 429 answer is
sent again after the server's Retry-After (seconds) or an exponential backoff with jitter,
within a number of retries and a total wait. Nothing else is retried: a refused
connection, a timeout or a broken connection raises ServiceUnreachableError (`unreachable`
words httpx's error; the request may have run), and the timeout is the HTTP client's own.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import httpx

from contrastkit.service.client.types import ServiceError, ServiceUnreachableError

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
    "unreachable",
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


def unreachable(e: httpx.TransportError) -> ServiceUnreachableError:
    """httpx's error for a request that got no answer, as one message that stands alone:
    the URL, what happened, and what to check (httpx's own text names neither the URL nor
    the server, e.g. "[Errno 111] Connection refused")."""
    url = _url_of(e)
    if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
        reason = _connect_reason(e)
        origin = f"{url.scheme}://{url.netloc.decode()}" if url else "the server"
        message = f"cannot connect to {origin}: {reason} (is `contrastive serve` running there?)"
        return ServiceUnreachableError(str(url), reason, message)
    what = f"{e.request.method} {url}" if url else "the request"
    if isinstance(e, httpx.TimeoutException):
        reason = _timeout_reason(e)
        return ServiceUnreachableError(
            str(url),
            reason,
            f"{what}: no answer in time ({reason}); the server may be overloaded or the "
            "request long: pass a larger timeout= to the client. The request may have run.",
        )
    reason = str(e) or type(e).__name__
    return ServiceUnreachableError(
        str(url),
        reason,
        f"{what}: the connection broke before the answer ({reason}); did the server stop "
        "or restart? The request may have run.",
    )


def _url_of(e: httpx.TransportError) -> httpx.URL | None:
    try:
        return e.request.url
    except RuntimeError:  # an error raised outside a request has none
        return None


def _connect_reason(e: httpx.TransportError) -> str:
    """The OS's words for a failed connect ("connection refused", "name or service not
    known"), found on the socket error that httpx wraps; else httpx's own text."""
    if isinstance(e, httpx.ConnectTimeout):
        return _timeout_reason(e)
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            # asyncio's strerror is "Connect call failed (...)": the errno's words are
            # the same under both clients; a resolver error's errno (< 0) has none
            errno = cause.errno or 0
            words = os.strerror(errno) if errno > 0 else cause.strerror
            return str(words)[:1].lower() + str(words)[1:]
        cause = cause.__cause__ or cause.__context__
    return str(e) or type(e).__name__


_TIMEOUT_PHASES = {
    httpx.ConnectTimeout: "connect",
    httpx.ReadTimeout: "read",
    httpx.WriteTimeout: "write",
    httpx.PoolTimeout: "pool",
}


def _timeout_reason(e: httpx.TimeoutException) -> str:
    """ "read timeout after 60 s": the phase that timed out and the client's limit for it."""
    phase = _TIMEOUT_PHASES.get(type(e), "")
    limits = e.request.extensions.get("timeout", {}) if _url_of(e) else {}
    seconds = limits.get(phase) if isinstance(limits, dict) else None
    after = f" after {seconds:g} s" if isinstance(seconds, int | float) else ""
    return f"{phase or 'a'} timeout{after}".strip()
