"""The HTTP edge of errors: domain error codes -> HTTP statuses, and one JSON error shape
for every 4xx and 5xx:

{"error": {"code": "image_decode_failed", "message": "...", "detail": ...}}

Nothing below the API layer knows a status: the runtime, the store and the request checks
raise a DomainError (contrastkit.service.domain_errors) with a code, and STATUS below is the only
table that maps a code to a status.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from contrastkit.service.domain_errors import DomainError, ErrorCode
from contrastkit.service.responses import FastJSON

log = logging.getLogger("contrastive.service")

STATUS: dict[ErrorCode, int] = {
    "image_decode_failed": 422,
    "image_too_large": 413,
    "url_not_supported": 422,
    "invalid_base64": 422,
    "model_not_ready": 503,
    "model_not_found": 404,
    "missing_capability": 400,
    "model_mismatch": 409,
    "unsupported_dimensions": 422,
    # the model answered NaN or infinity: an invalid answer from the component behind the
    # API (502), not the client's fault (4xx) and not a bug of ours (500)
    "model_output_invalid": 502,
    # the admin API: a model that left, an operation under way, a load that failed
    "model_unloaded": 409,
    "model_busy": 409,
    "model_exists": 409,
    "model_is_default": 409,
    "model_load_failed": 422,
    "operation_not_found": 404,
    "overloaded": 503,
    "out_of_memory": 503,
    # the client left before its answer (nginx's 499): seen in metrics only, never read
    "client_closed_request": 499,
    "invalid_name": 422,
    "invalid_dimension": 422,
    "collection_exists": 409,
    "collection_not_found": 404,
    "collection_corrupt": 503,
    "item_not_found": 404,
    "alias_not_found": 404,
    # an alias named as a collection (or a collection as an alias); a collection an alias
    # points to cannot be dropped: both are resolved by changing the aliases first
    "alias_conflict": 409,
    "collection_aliased": 409,
    "insufficient_storage": 507,
    "storage_error": 503,
    "store_unavailable": 503,
    "backend_unavailable": 503,
    "collections_disabled": 404,
    # a write through an alias that a migration switched while the write was read: not
    # written; sent again, it reaches the collection the alias names now
    "alias_switched": 409,
    "migration_running": 409,
    "migration_refused": 409,
    "migration_not_found": 404,
    # a near-duplicate scan past max_duplicate_scan items: the client narrows it (a filter,
    # max_items), so a request error rather than 413, whose body is not what is large
    "scan_too_large": 422,
    "unsupported_media_type": 415,
    "invalid_json": 422,
    "invalid_request": 422,
    "empty_input": 422,
    "too_many_items": 422,
    "empty_text": 422,
    "text_too_long": 422,
    "invalid_text": 422,
    # token ids that this server cannot read (no tiktoken, or its vocabulary not loadable):
    # the client can send the texts themselves, which the message says how
    "tokens_not_supported": 422,
    "invalid_tokens": 422,
    "too_many_labels": 422,
    "duplicate_labels": 422,
    "too_many_templates": 422,
    "invalid_template": 422,
    "wrong_dimension": 422,
    "invalid_k": 422,
    "invalid_id": 422,
    "invalid_metadata": 422,
    "invalid_source": 422,
    "invalid_vector": 422,
    "invalid_filter": 422,
    "unauthorized": 401,
    "forbidden": 403,  # a key that is not an admin key, on an admin route
    "admin_disabled": 403,  # the admin API on a server without keys
    "payload_too_large": 413,
    "not_found": 404,
    "internal_error": 500,
}

# The other direction, for errors that Starlette and FastAPI raise themselves (an unknown
# path, a wrong method, a multipart limit): they come with a status and need a code.
_CODE_OF_STATUS = {
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


def http_status(code: ErrorCode) -> int:
    """The status a domain error code is answered with (500 for a code with no entry,
    which tests/service/test_errors.py rules out)."""
    return STATUS.get(code, 500)


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "detail": detail}}


def error_response(
    code: ErrorCode, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> FastJSON:
    """The JSON error response for `code`, with the status from STATUS."""
    body = error_body(code, message, detail)
    return FastJSON(body, status_code=http_status(code), headers=headers)


def domain_error_response(err: DomainError) -> FastJSON:
    headers = None if err.retry_after is None else {"Retry-After": str(err.retry_after)}
    return error_response(err.code, err.message, err.detail, headers)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)  # subclasses too: handlers are found by the MRO
    async def _domain_error(_: Request, exc: DomainError) -> FastJSON:
        return domain_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> FastJSON:
        errors = [_clean(e) for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body") or "body"
        return error_response("invalid_request", f"{where}: {first['msg']}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> FastJSON:
        code = _CODE_OF_STATUS.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            where = f"{request.method} {request.url.path}"
            message = f"{message}: {where} (the API is listed at /docs)"
        headers = dict(exc.headers) if exc.headers else None
        return FastJSON(error_body(code, message), status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> FastJSON:
        log.exception("unhandled error")
        return error_response("internal_error", "internal error; see the server log")


def _clean(err: Any) -> dict[str, Any]:
    """Pydantic error -> JSON-safe dict (drops the raw input, which may be huge or binary)."""
    return {
        "loc": list(err.get("loc", ())),
        "msg": str(err.get("msg", "")),
        "type": str(err.get("type", "")),
    }
