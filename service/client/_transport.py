"""What travels: the HTTP clients the classes accept, one request, and error bodies.

`Call` pairs a `Request` with the function that reads its response; the operations in
`_requests` build Calls and the two client classes only send them, so sync and async
cannot drift apart. There is no retry layer: connection failures and timeouts propagate
as httpx errors, and the timeout is the HTTP client's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from service.client.types import ServiceError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT",
    "AsyncHttpClient",
    "Call",
    "Files",
    "HttpClient",
    "Request",
    "Response",
    "auth_headers",
    "json_body",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0

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
