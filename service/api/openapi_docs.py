"""The OpenAPI document: what FastAPI infers, completed where it cannot.

- Routes that read their own body (JSON or multipart) document it with
  `json_or_multipart`; the models and forms it names are added as components.
- Limits that come from the settings (items per request, characters per text, k) are
  written into the schemas, so the document says what the running server accepts.
- Every error answer has the one error body (`error_responses`). The bearer scheme is
  always declared, so the docs page's Authorize button works; the protected operations
  require it (and declare their 401) when API keys are set, and take it as optional
  when they are not (the server then ignores the header). The admin operations, in the
  document only when the server has keys, always require it.

A fuzzer (tests/service/api/test_schemathesis.py) holds the document to the server's answers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api.collection_checks import MAX_INDEX_PARAM
from service.index.types import MAX_DIM
from service.schemas.status import ErrorResponse
from service.settings import Settings

REF = "#/components/schemas/{model}"
FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}
STRINGS = {"type": "array", "items": {"type": "string"}}
# A text the checks accept (service.api.request_checks.check_text): not blank, no NUL.
TEXT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
TEMPLATE_PATTERN = r"^[^\x00]*\{\}[^\x00]*$"
# Collection names (service.index.types.check_name): a letter or digit, then letters,
# digits, '_', '.', '-', never two dots in a row; written without look-arounds.
NAME_PATTERN = r"^[A-Za-z0-9](\.?[A-Za-z0-9_-])*\.?$"
MAX_NAME_CHARS = 64

ERRORS: dict[int, str] = {
    400: "The loaded model lacks a capability the request needs (`missing_capability`)",
    401: "No API key, or a wrong one (`unauthorized`)",
    403: "An API key where an admin key is needed (`forbidden`)",
    404: "No such model, collection or item",
    409: "The collection exists already, or holds vectors of another model or of one "
    "unloaded (`model_unloaded`); a model operation is under way, the model is served "
    "already or is the default",
    413: "The body or an image is too large",
    415: "The body's Content-Type is not one this operation reads",
    422: "The request is refused: the message says what to change",
    500: "A bug: see the server log",
    502: "The model's output was not finite (`model_output_invalid`)",
    503: "The model is loading, the server is full, or storage failed: retry later",
    507: "The disk is full (`insufficient_storage`)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for routes answering these error statuses, each with the error body."""
    return {s: {"model": ErrorResponse, "description": ERRORS[s]} for s in statuses}


@dataclass(frozen=True)
class Form:
    """A multipart body: `files` plus these fields (name -> JSON schema). `closed`: the
    route refuses other fields."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    required: tuple[str, ...] = ()

    def schema(self) -> dict[str, Any]:
        # A copy: the limits are written into it in place (_apply_limits).
        properties = copy.deepcopy({"files": FILES, **self.fields})
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "title": self.name,
        }
        if self.closed:
            schema["additionalProperties"] = False
        if self.required:
            schema["required"] = list(self.required)
        return schema


MODEL_FIELD = {"type": "string", "description": "optional; must name the loaded model"}
IMAGE_FORM = Form("EmbedImageForm", {"model": MODEL_FIELD}, required=("files",))
CLASSIFY_FORM = Form(
    "ClassifyForm",
    {
        "labels": STRINGS,
        "templates": STRINGS,
        "top_k": {"type": "integer", "minimum": 1},
        "model": MODEL_FIELD,
    },
    required=("files", "labels"),
)

# What json_or_multipart documented: added to the components when the document is built.
_BODIES: dict[str, type[BaseModel]] = {}
_FORMS: dict[str, Form] = {}


def json_or_multipart(model: type[BaseModel], form: Form) -> dict[str, Any]:
    """openapi_extra documenting both accepted bodies: `model` as JSON, and `form` as
    multipart. Both are components (`install` adds them: openapi_extra cannot)."""
    _BODIES[model.__name__] = model
    _FORMS[form.name] = form
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": REF.format(model=model.__name__)}},
                "multipart/form-data": {"schema": {"$ref": REF.format(model=form.name)}},
            },
        }
    }


def install(
    app: FastAPI, settings: Settings, is_open: Callable[[str], bool], admin_prefix: str
) -> None:
    """Make `app.openapi()` return the completed document (built once, then cached).
    `is_open(path)`: the paths that need no API key; paths under `admin_prefix` always
    need one (an admin key)."""
    infer = app.openapi

    def required(path: str) -> bool:
        return bool(settings.api_keys) or path.startswith(admin_prefix)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = infer()  # FastAPI caches it in app.openapi_schema; completed in place
            _add_components(doc)
            _apply_limits(doc, settings)
            _add_security(doc, is_open, required)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _add_components(doc: dict[str, Any]) -> None:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    _, top = models_json_schema([(m, "validation") for m in _BODIES.values()], ref_template=REF)
    for name, schema in top.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    for form in _FORMS.values():
        schemas[form.name] = form.schema()


# -- limits from the settings ------------------------------------------------------------
def _limits(s: Settings) -> dict[str, dict[str, dict[str, Any]]]:
    """component -> property -> JSON Schema keywords that the server enforces."""
    text = {"minLength": 1, "maxLength": s.max_text_chars, "pattern": TEXT_PATTERN}
    template = {"minLength": 2, "maxLength": s.max_text_chars, "pattern": TEMPLATE_PATTERN}
    index_param = {"maximum": MAX_INDEX_PARAM}

    def some(limit: int, item: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
        return {"minItems": 1, "maxItems": limit, **({"items": item} if item else {}), **more}

    images = {"images": some(s.max_images), "files": some(s.max_images)}
    labels = some(s.max_labels, text, uniqueItems=True)
    return {
        "EmbedTextRequest": {"texts": some(s.max_texts, text)},
        "EmbedImageRequest": {"images": images["images"]},
        "EmbedImageForm": {"files": images["files"]},
        "ClassifyRequest": {
            "images": images["images"],
            "labels": labels,
            "templates": some(s.max_templates, template),
        },
        "ClassifyForm": {
            "files": images["files"],
            "labels": labels,
            "templates": some(s.max_templates, template),
        },
        # strings or {"text"}/{"image"} objects: the count is limited, each string is a
        # text or (modality "image") an image, so only the count is stated here
        "OpenAIEmbeddingRequest": {
            "input": {
                "minItems": 1,
                "maxItems": s.max_texts,
                "minLength": 1,
                "pattern": TEXT_PATTERN,
                "items": {"minLength": 1, "pattern": TEXT_PATTERN},
            }
        },
        "CreateCollectionRequest": {
            "name": {"pattern": NAME_PATTERN, "maxLength": MAX_NAME_CHARS},
            "dim": {"maximum": MAX_DIM},
        },
        "IndexSpecModel": {
            name: index_param
            for name in ("auto_threshold", "nlist", "nprobe", "ef_construction", "ef_search")
        },
        "UpsertRequest": {"items": some(s.max_items)},
        "UpsertForm": {"files": some(s.max_items), "ids": {"maxItems": s.max_items}},
        "ItemIn": {"text": text},
        "DeleteItemsRequest": {"ids": some(s.max_items)},
        "SearchRequest": {"queries": some(s.max_queries), "k": {"minimum": 1, "maximum": s.max_k}},
        "SearchForm": {
            "k": {"minimum": 1, "maximum": s.max_k},
            "texts": {"maxItems": s.max_queries, "items": text},
            "files": {"maxItems": s.max_queries},
        },
        "Query": {"text": text},
    }


# Which keywords apply to which JSON type (a limit on `str | list[str]` splits in two).
_KEYWORDS = {
    "array": {"minItems", "maxItems", "uniqueItems", "items"},
    "string": {"minLength", "maxLength", "pattern"},
    "integer": {"minimum", "maximum"},
}


def _apply_limits(doc: dict[str, Any], s: Settings) -> None:
    schemas = doc["components"]["schemas"]
    for component, properties in _limits(s).items():
        if component not in schemas:  # e.g. the collections, when they are off
            continue
        for name, limits in properties.items():
            _constrain(schemas[component]["properties"][name], limits)
    _space_both_or_neither(schemas)
    _classify_product(schemas, s.max_classify_texts)
    name_param = {"pattern": NAME_PATTERN, "maxLength": MAX_NAME_CHARS}
    for op in _operations(doc):
        for param in op.get("parameters", []):
            if param["in"] == "path" and param["name"] == "name":
                _constrain(param["schema"], name_param)


def _classify_product(schemas: dict[str, Any], limit: int) -> None:
    """labels x templates is bounded too; JSON Schema cannot say it, the description does."""
    rule = (
        f"len(labels) x len(templates) (the model's default templates when none are given) must "
        f"not exceed {limit} (`max_classify_texts`), else 422 `too_many_items`."
    )
    for component in ("ClassifyRequest", "ClassifyForm"):
        if component in schemas:
            before = schemas[component].get("description", "")
            schemas[component]["description"] = f"{before}\n\n{rule}".strip()


def _space_both_or_neither(schemas: dict[str, Any]) -> None:
    """A collection is in the loaded model's space (neither model_id nor dim) or in a named
    one (both). The server also accepts either alone when it equals the loaded model's; the
    document asks for the simpler rule, which is always accepted."""
    create = schemas.get("CreateCollectionRequest")
    if create is None:
        return
    given = {"model_id": {"type": "string"}, "dim": {"type": "integer"}}
    create["allOf"] = [
        {
            "if": {"required": [a], "properties": {a: given[a]}},
            "then": {"required": [b], "properties": {b: given[b]}},
        }
        for a, b in (("model_id", "dim"), ("dim", "model_id"))
    ]


def _constrain(schema: dict[str, Any], limits: dict[str, Any]) -> None:
    """Add `limits` to `schema`, or to each branch of its anyOf, keyword by JSON type."""
    for branch in schema.get("anyOf", [schema]):
        allowed = _KEYWORDS.get(branch.get("type", ""), set())
        for key, value in limits.items():
            if key not in allowed:
                continue
            if key == "items":
                _constrain(branch["items"], value)
            else:
                branch[key] = value


# -- API keys -----------------------------------------------------------------------------
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "`Authorization: Bearer <key>`, one of the server's API keys "
    "(`CONTRASTIVE_API_KEYS`). Needed only when the server is configured with keys; "
    "the health probes, the web page and these docs never need it. The admin operations "
    "(/v1/admin) always need one, an admin key when the server has some "
    "(`CONTRASTIVE_ADMIN_KEYS`).",
}


def _add_security(
    doc: dict[str, Any], is_open: Callable[[str], bool], required: Callable[[str], bool]
) -> None:
    """Declare the bearer scheme on every protected operation: required (and a 401) where
    `required(path)`; optional (`{}`, no auth, is an alternative) elsewhere, which is
    what the server then does, and what the fuzzer holds the document to."""
    doc["components"]["securitySchemes"] = {"bearer": BEARER}
    unauthorized = error_responses(401)[401]
    body = {"application/json": {"schema": {"$ref": REF.format(model=ErrorResponse.__name__)}}}
    for path, ops in doc["paths"].items():
        if is_open(path):
            continue
        needed = required(path)
        requirement: list[dict[str, list[str]]] = [{"bearer": []}]
        if not needed:
            requirement.append({})
        for op in ops.values():
            op["security"] = [dict(r) for r in requirement]  # no shared objects in the doc
            if needed:
                op["responses"]["401"] = {
                    "description": unauthorized["description"],
                    "content": body,
                }


def _operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for ops in doc["paths"].values() for op in ops.values()]
