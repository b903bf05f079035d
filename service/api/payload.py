"""Request bodies that may come as JSON or as multipart uploads."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from service.errors import ApiError
from service.runtime.images import decode_base64_image
from service.settings import Settings

M = TypeVar("M", bound=BaseModel)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def require_json_dep(request: Request) -> None:
    """Dependency (async: a sync one would cost a thread hop per request)."""
    require_json(request)


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON."""
    mt = media_type(request)
    if mt != "application/json" and not mt.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected Content-Type application/json, got {mt or 'none'!r}",
        )


async def parse_json(request: Request, model: type[M]) -> M:
    body = await request.body()
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ApiError(422, "invalid_json", f"the body is not valid JSON: {e}") from e
    return validate_body(model, raw)


def validate_body(model: type[M], raw: Any) -> M:
    """Parsed JSON -> model, or a 422 naming the first bad field."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        detail = [{"loc": list(x["loc"]), "msg": x["msg"], "type": x["type"]} for x in e.errors()]
        raise ApiError(422, "invalid_request", f"{where}: {first['msg']}", detail) from e


async def read_form(request: Request, s: Settings) -> tuple[list[bytes], dict[str, list[str]]]:
    """multipart/form-data -> (file contents in order, other fields by name)."""
    form = await request.form(
        max_files=s.max_images + 1, max_fields=s.max_labels + s.max_templates + 16
    )
    blobs: list[bytes] = []
    fields: dict[str, list[str]] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            blobs.append(await value.read())
        else:
            fields.setdefault(name, []).append(value)
    await form.close()
    return blobs, fields


def is_multipart(request: Request) -> bool:
    return media_type(request) == "multipart/form-data"


def images_from_json(images: list[str]) -> list[bytes]:
    return [decode_base64_image(v, i) for i, v in enumerate(images)]


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
            raise ApiError(422, "invalid_request", f"'{name}' is not a valid JSON array") from e
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise ApiError(422, "invalid_request", f"'{name}' must be an array of strings")
        return parsed
    return values


def multipart_or_json_body(json_schema: str) -> dict[str, Any]:
    """openapi_extra documenting both accepted bodies of an image endpoint."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{json_schema}"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "files": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            },
                            "labels": {"type": "array", "items": {"type": "string"}},
                            "templates": {"type": "array", "items": {"type": "string"}},
                        },
                    }
                },
            },
        }
    }
