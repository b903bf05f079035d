"""Request bodies that may come as JSON or as multipart uploads: one reader of each, shared
by the embedding, classification and collection routes."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from contrastkit.service.api.request_checks import bad
from contrastkit.service.domain_errors import RequestError

M = TypeVar("M", bound=BaseModel)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_multipart(request: Request) -> bool:
    return media_type(request) == "multipart/form-data"


async def require_json_dep(request: Request) -> None:
    """Dependency (async: a sync one would cost a thread hop per request)."""
    require_json(request)


def require_json(request: Request) -> None:
    """`unsupported_media_type` unless the body is declared JSON."""
    mt = media_type(request)
    if mt != "application/json" and not mt.endswith("+json"):
        raise bad(
            "unsupported_media_type",
            f"expected Content-Type application/json, got {mt or 'none'!r}",
        )


# -- JSON -----------------------------------------------------------------------------------
# orjson reads an integer beyond 64 bits as the nearest float, which is integral and at least
# 2**63 in magnitude; a float like that in a body may be such an integer.
_ROUNDED_INT_FLOOR = 2.0**63


async def read_json(
    request: Request, model: type[M], non_finite: bool = False, exact: bool = False
) -> M:
    """A JSON body -> `model`: `unsupported_media_type` unless declared JSON,
    `invalid_json` if it does not parse, `invalid_request` naming the first bad field.

    `non_finite`: also read NaN, Infinity and 1e999, which orjson refuses, with the
    standard library, so that a later check can name the bad number (a non-finite vector)
    rather than call the whole body invalid JSON. `exact`: read it with the standard
    library only, which keeps integers beyond 64 bits exact (see holds_rounded_ints).
    """
    require_json(request)
    body = await request.body()
    if exact:
        return validate_body(model, _stdlib_loads(body, None))
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if not non_finite:
            raise bad("invalid_json", f"the body is not valid JSON: {e}") from e
        raw = _stdlib_loads(body, e)
    return validate_body(model, raw)


def _stdlib_loads(body: bytes | str, orjson_error: Exception | None) -> Any:
    """The standard library's reading of `body` (NaN and big integers as they are), or
    `invalid_json` with orjson's message when there is one (it says where)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        cause = orjson_error or e
        raise bad("invalid_json", f"the body is not valid JSON: {cause}") from cause


def holds_rounded_ints(value: Any) -> bool:
    """Whether parsed JSON holds a float that orjson may have made of an integer beyond
    64 bits (an integral float of magnitude >= 2**63): read such a body again, exactly."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, float) and abs(v) >= _ROUNDED_INT_FLOOR and v.is_integer():
            return True
    return False


def validate_body(model: type[M], raw: Any) -> M:
    """Parsed JSON -> model, or `invalid_request` naming the first bad field."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        detail = [{"loc": list(x["loc"]), "msg": x["msg"], "type": x["type"]} for x in e.errors()]
        raise RequestError("invalid_request", f"{where}: {first['msg']}", detail) from e


# -- multipart ------------------------------------------------------------------------------
@dataclass
class Form:
    """A multipart body: its files as (filename, content) in order, other fields by name."""

    files: list[tuple[str, bytes]]
    fields: dict[str, list[str]]

    @property
    def blobs(self) -> list[bytes]:
        return [content for _, content in self.files]


async def read_form(
    request: Request,
    max_files: int,
    max_fields: int,
    allowed: Collection[str] | None = None,
) -> Form:
    """multipart/form-data -> Form. `allowed`: the only field names accepted besides files
    (`invalid_request` for others, and for a 'files' part that is not a file); None
    accepts any.

    One file more than `max_files` is let through, so that the caller's count check
    answers `too_many_items` rather than Starlette a bare 400.
    """
    try:
        form = await request.form(max_files=max_files + 1, max_fields=max_fields)
    except HTTPException as e:
        # Starlette stops at its limits with a bare 400; past them is too many items.
        if str(e.detail).startswith("Too many"):
            raise bad("too_many_items", f"{e.detail} (at most {max_files} files)") from e
        raise
    files: list[tuple[str, bytes]] = []
    fields: dict[str, list[str]] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((value.filename or "", await value.read()))
            elif allowed is None or name in allowed:
                fields.setdefault(name, []).append(value)
            elif name == "files":
                raise bad("invalid_request", "each 'files' part must be a file with a filename")
            else:
                raise bad(
                    "invalid_request",
                    f"unknown form field {name!r}; expected files and "
                    + ", ".join(repr(f) for f in allowed),
                )
    finally:
        await form.close()
    return Form(files, fields)


def first_value(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values else None


def list_field(fields: dict[str, list[str]], name: str) -> list[str] | None:
    """A multipart list: repeated fields (labels=cat&labels=dog), or one JSON array string."""
    values = fields.get(name)
    if values is None:
        return None
    if len(values) == 1 and values[0].lstrip().startswith("["):
        try:
            parsed: Any = orjson.loads(values[0])
        except orjson.JSONDecodeError as e:
            raise bad("invalid_request", f"'{name}' is not a valid JSON array") from e
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise bad("invalid_request", f"'{name}' must be an array of strings")
        return parsed
    return values


def json_field(fields: dict[str, list[str]], name: str) -> Any:
    """A multipart field holding one JSON value (None when absent). Read by the standard
    library: fields are small, and it keeps big integers and NaN as they are, for the
    checks to refuse by name (orjson would round the one and refuse the whole field)."""
    values = json_parts(fields, name)
    if values is None:
        return None
    if len(values) > 1:
        raise bad("invalid_request", f"form field {name!r} is given {len(values)} times")
    return values[0]


def json_parts(fields: dict[str, list[str]], name: str) -> list[Any] | None:
    """Each part of a multipart field, read as JSON (None when absent), as json_field
    reads one."""
    values = fields.get(name)
    if not values:
        return None
    try:
        return [json.loads(v) for v in values]
    except (ValueError, RecursionError) as e:
        raise bad("invalid_request", f"form field {name!r} is not valid JSON: {e}") from e
