"""One JSON error shape for every 4xx and 5xx:

{"error": {"code": "image_decode_failed", "message": "...", "detail": ...}}
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.index.types import CollectionError
from service.responses import FastJSON

log = logging.getLogger("contrastive.service")


class ApiError(Exception):
    """An error with a status, a stable machine-readable code and a human message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "detail": detail}}


def error_response(err: ApiError) -> FastJSON:
    return FastJSON(
        error_body(err.code, err.message, err.detail), status_code=err.status, headers=err.headers
    )


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> FastJSON:
        return error_response(exc)

    @app.exception_handler(CollectionError)
    async def _collection_error(_: Request, exc: CollectionError) -> FastJSON:
        return error_response(ApiError(exc.status, exc.code, exc.message))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> FastJSON:
        errors = [_clean(e) for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body") or "body"
        return error_response(ApiError(422, "invalid_request", f"{where}: {first['msg']}", errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> FastJSON:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            where = f"{request.method} {request.url.path}"
            message = f"{message}: {where} (the API is listed at /docs)"
        headers = dict(exc.headers) if exc.headers else None
        return error_response(ApiError(exc.status_code, code, message, headers=headers))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> FastJSON:
        log.exception("unhandled error")
        return error_response(ApiError(500, "internal_error", "internal error; see the server log"))


def _clean(err: Any) -> dict[str, Any]:
    """Pydantic error -> JSON-safe dict (drops the raw input, which may be huge or binary)."""
    return {
        "loc": list(err.get("loc", ())),
        "msg": str(err.get("msg", "")),
        "type": str(err.get("type", "")),
    }
