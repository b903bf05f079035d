"""The routes, one module per resource; and `refusing_router`, which a server mounts in
place of a resource it has turned off."""

from __future__ import annotations

from typing import NoReturn

from fastapi import APIRouter

from contrastkit.service.domain_errors import ErrorCode, RequestError


def refusing_router(prefix: str, code: ErrorCode, message: str) -> APIRouter:
    """A router that refuses every path under `prefix`, whatever the method and the body,
    with the domain error `code` before anything is read. Left out of the API docs."""
    router = APIRouter(include_in_schema=False)

    @router.api_route(
        prefix + "{rest:path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        response_model=None,
    )
    async def refuse(rest: str) -> NoReturn:
        raise RequestError(code, message)

    return router
