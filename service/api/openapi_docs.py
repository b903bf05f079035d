"""OpenAPI for routes that read their own body (JSON or multipart): FastAPI cannot infer
it from the signature, so `json_or_multipart` writes the requestBody out."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}
STRINGS = {"type": "array", "items": {"type": "string"}}
# The multipart fields documented for /v1/embed/image and /v1/classify (besides files).
IMAGE_FORM = {"labels": STRINGS, "templates": STRINGS}


def json_or_multipart(model: type[BaseModel], form: dict[str, Any]) -> dict[str, Any]:
    """openapi_extra documenting both accepted bodies: `model` as JSON, and multipart with
    `files` plus the `form` fields (name -> JSON schema).

    The model's schema is written out in place: openapi_extra cannot register components,
    so a "#/components/schemas/..." reference would point at nothing.
    """
    schema = model.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline(schema, schema.get("$defs", {}))},
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {"files": FILES, **form}}
                },
            },
        }
    }


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """A pydantic JSON schema with its "#/$defs/..." references written out in place."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node
