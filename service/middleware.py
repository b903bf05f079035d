"""Pure ASGI middleware (cheaper than BaseHTTPMiddleware): metrics, drain, API keys, body
limit, the `Allow` header of 405 answers, and overload shed before a request is read."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Sequence

from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contrastkit.service.domain_errors import DomainError, ErrorCode
from contrastkit.service.errors import domain_error_response, error_response
from contrastkit.service.metrics import Metrics

# The API docs are open too: they show the schema only (no collection, item or model
# output), and every call made from them still needs the key, sent through the page's
# Authorize button. FastAPI's default docs URLs (contrastkit.service.app).
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"}) | DOCS_PATHS
OPEN_PREFIXES = (
    "/web/",  # the web page's assets (the page asks for the key itself)
    "/static-offline-docs/",  # Swagger UI and ReDoc's files (fastapi-offline)
)
# The methods `Allow` may list, in its order (RFC 9110 sets none; this one reads well).
METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def _reply(
    scope: Scope,
    receive: Receive,
    send: Send,
    code: ErrorCode,
    msg: str,
    headers: dict[str, str] | None = None,
) -> None:
    """Answer with the error shape before the app runs (its status: contrastkit.service.errors)."""
    await error_response(code, msg, headers=headers)(scope, receive, send)


class MetricsMiddleware:
    """Counts requests and times them by route template (not raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(name, method, str(status)).inc()
            self.metrics.latency.labels(name, method).observe(time.perf_counter() - start)


class DrainMiddleware:
    """While the service drains (after SIGTERM), every response says `Connection: close`,
    so keep-alive clients reconnect, through their load balancer, to another replica."""

    def __init__(self, app: ASGIApp, draining: Callable[[], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and self.draining():
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_wrapper)


class ApiKeyMiddleware:
    """When keys are set, every path but the health probes, the web page and the API docs
    (`is_open`) needs `Authorization: Bearer KEY`. Paths under `admin_prefix` need one of
    `admin_keys` (a key of `keys` that is not one: 403), whatever the others need."""

    def __init__(
        self,
        app: ASGIApp,
        keys: list[str],
        admin_keys: Sequence[str] = (),
        admin_prefix: str = "/v1/admin",
    ) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.admin_keys = [k.encode() for k in admin_keys]
        self.admin_paths = admin_prefix.rstrip("/") + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.admin_keys and path.startswith(self.admin_paths):
            await self._admin(scope, receive, send)
        elif not self.keys or is_open(path) or has_key(scope, self.keys):
            await self.app(scope, receive, send)
        else:
            await _unauthorized(scope, receive, send, "API key")

    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        if has_key(scope, self.admin_keys):
            await self.app(scope, receive, send)
        elif has_key(scope, self.keys):
            msg = "this key is an API key, not an admin key: the admin API takes admin_keys"
            await _reply(scope, receive, send, "forbidden", msg)
        else:
            await _unauthorized(scope, receive, send, "admin key")


async def _unauthorized(scope: Scope, receive: Receive, send: Send, what: str) -> None:
    await _reply(
        scope,
        receive,
        send,
        "unauthorized",
        f"missing or wrong {what}: send 'Authorization: Bearer <key>'",
        {"WWW-Authenticate": "Bearer"},
    )


def has_key(scope: Scope, keys: Sequence[bytes]) -> bool:
    """Whether the request carries `Authorization: Bearer K` for one of `keys`."""
    header = b""
    for k, v in scope["headers"]:
        if k == b"authorization":
            header = v
    scheme, _, token = header.partition(b" ")
    ok = False
    for key in keys:  # compare with every key: time does not reveal which matched
        ok |= hmac.compare_digest(token.strip(), key)
    return ok and scheme.lower() == b"bearer"


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


class BodyLimitMiddleware:
    """413 for bodies over `limit`: by Content-Length before reading anything, else while
    streaming, as soon as the running count passes the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await _reply(
                scope,
                receive,
                send,
                "payload_too_large",
                f"request body is {declared} bytes; the limit is {self.limit}",
                {"Connection": "close"},
            )
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


class AllowMiddleware:
    """A 405 answer's `Allow` lists every method its path supports. Starlette lists those
    of the first route whose path matched, but one path may be served by several routes
    (GET and POST /v1/collections), and RFC 9110 wants them all."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes  # the app's own list: routes added later are seen too

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                message = _with_allow(message, allowed_methods(self.routes, scope))
            await send(message)

        await self.app(scope, receive, send_wrapper)


class ShedMiddleware:
    """A POST that `refusal(path)` refuses is answered with that error before anything of
    it is read (contrastkit.service.api.shedding says when). Metrics count it under its path, which
    for these routes is their template."""

    def __init__(self, app: ASGIApp, refusal: Callable[[str], DomainError | None]) -> None:
        self.app = app
        self.refusal = refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            error = self.refusal(scope["path"])
            if error is not None:
                scope["route"] = _Shed(scope["path"])  # for MetricsMiddleware's label
                await domain_error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Shed:
    """What MetricsMiddleware reads of a route: its path."""

    def __init__(self, path: str) -> None:
        self.path = path


def _with_allow(start: Message, methods: list[str]) -> Message:
    """The response start `start` with `Allow: methods` (as it was, if there are none)."""
    if not methods:
        return start
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"allow"]
    return {**start, "headers": [*headers, (b"allow", ", ".join(methods).encode())]}


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """The methods some route fully matches the request's path with, in METHOD_ORDER.

    Each method is tried through the routes' own `matches`, so that included routers (which
    FastAPI resolves lazily) answer for their routes. Mounts are left out: they match any
    method, and their apps answer 405s themselves. The answer is what the server does
    (e.g. /v1/collections/{name}/items/delete allows POST only: its item route never
    matches that path, contrastkit.service.api.routes.collections).
    """
    found = []
    for method in METHOD_ORDER:
        probe = {**scope, "method": method}
        if any(
            not isinstance(route, Mount) and route.matches(probe)[0] is Match.FULL
            for route in routes
        ):
            found.append(method)
    return found


def is_open(path: str) -> bool:
    """Whether `path` is served without an API key (the probes, the web page, the docs)."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _content_length(scope: Scope) -> int | None:
    for k, v in scope["headers"]:
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None
