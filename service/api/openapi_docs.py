"""The OpenAPI document: what FastAPI infers, completed where it cannot.

- Routes that read their own body (JSON or multipart) document it with
  `json_or_multipart`; the models and forms it names are added as components.
- Limits that come from the settings (items per request, characters per text, k) are
  written into the schemas, so the document says what the running server accepts; so are
  the rules that depend on the models served (contrastkit.service.api.openapi_rules), and the
  document is built again when they change.
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

from contrastkit.service.api.collection_checks import MAX_INDEX_PARAM
from contrastkit.service.api.openapi_rules import (
    ModelSpace,
    add_model_rules,
    add_token_rules,
    token_encodings,
)
from contrastkit.service.index.filters import MAX_CONDITIONS, MAX_IN_VALUES, RANGE_OPS
from contrastkit.service.index.types import MAX_DIM, MAX_ID_CHARS
from contrastkit.service.schemas.status import ErrorResponse
from contrastkit.service.settings import Settings

REF = "#/components/schemas/{model}"
FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}
STRINGS = {"type": "array", "items": {"type": "string"}}
# A text the checks accept (contrastkit.service.api.request_checks.check_text): not blank, no NUL.
TEXT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
TEMPLATE_PATTERN = r"^[^\x00]*\{\}[^\x00]*$"
# Collection names (contrastkit.service.index.types.check_name): a letter or digit, then letters,
# digits, '_', '.', '-', never two dots in a row; written without look-arounds.
NAME_PATTERN = r"^[A-Za-z0-9](\.?[A-Za-z0-9_-])*\.?$"
MAX_NAME_CHARS = 64
# An image in JSON (contrastkit.service.runtime.images.decode_base64_image): standard base64 (RFC
# 4648, padded; spaces and line breaks anywhere), after an optional data: URL head, and never a URL,
# which the server would not fetch. Whether its bytes are a decodable image, no JSON Schema can say.
_B64 = r"\s*[A-Za-z0-9+/]"
_QUAD = f"(?:{_B64}){{4}}"
_LAST = rf"(?:{_B64}){{2}}\s*=\s*=|(?:{_B64}){{3}}\s*="
_DATA_URL = r"[Dd][Aa][Tt][Aa]:(?:[^,/][^,]*)?;[Bb][Aa][Ss][Ee]64,"
IMAGE_PATTERN = rf"^\s*(?:{_DATA_URL})?(?:{_QUAD})*(?:{_LAST}|{_QUAD})\s*$"
IMAGE = {"minLength": 1, "pattern": IMAGE_PATTERN}
# an item's source: non-empty, no NUL (its 2048-byte UTF-8 limit is no JSON Schema keyword)
SOURCE = {"minLength": 1, "pattern": r"^[^\x00]+$"}
# A raw vector (collection_checks.check_vector): its length is the collection's dimension,
# at most MAX_DIM, and it must not be all zeros (it would have no direction).
VECTOR = {"minItems": 1, "maxItems": MAX_DIM, "not": {"items": {"const": 0}}}
ITEM_ID = {"minLength": 1, "maxLength": MAX_ID_CHARS}
# What `item_id` may not be in GET /v1/collections/{name}/items/{item_id}: that path is the
# delete operation's (contrastkit.service.api.routes.collections says why).
RESERVED_ITEM_PATH = "delete"

ERRORS: dict[int, str] = {
    400: "The loaded model lacks a capability the request needs (`missing_capability`)",
    401: "No API key, or a wrong one (`unauthorized`)",
    403: "An API key where an admin key is needed (`forbidden`)",
    404: "No such model, collection, alias or item",
    405: "The path is another operation's, with other methods (`Allow` lists them)",
    409: "The collection exists already, or holds vectors of another model or of one "
    "unloaded (`model_unloaded`); an alias and a collection would share a name "
    "(`alias_conflict`), or an alias points to the collection (`collection_aliased`); "
    "a model operation is under way, the model is served already or is the default",
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
    """A multipart body: `files` (images) plus these fields (name -> JSON schema).
    `closed`: the route refuses other fields. `json`: the fields whose parts hold JSON
    (each part of an array one item, as OpenAPI sends arrays in multipart)."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    required: tuple[str, ...] = ()
    json: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # more keywords of the schema

    def encoding(self) -> dict[str, dict[str, str]]:
        """The multipart `encoding`: files are images (any format PIL reads), and the
        `json` fields application/json."""
        parts = {"files": {"contentType": "image/*"}}
        return parts | {name: {"contentType": "application/json"} for name in self.json}

    def schema(self) -> dict[str, Any]:
        # A copy of each field: the limits are written into it in place (_apply_limits),
        # and fields that share a schema (STRINGS) must not share their limits.
        properties = {k: copy.deepcopy(v) for k, v in {"files": FILES, **self.fields}.items()}
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "title": self.name,
        }
        if self.closed:
            schema["additionalProperties"] = False
        if self.required:
            schema["required"] = list(self.required)
        return schema | copy.deepcopy(self.extra)


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
                "multipart/form-data": {
                    "schema": {"$ref": REF.format(model=form.name)},
                    "encoding": form.encoding(),
                },
            },
        }
    }


def install(
    app: FastAPI,
    settings: Settings,
    is_open: Callable[[str], bool],
    admin_prefix: str,
    spaces: Callable[[], tuple[ModelSpace, ...]] = tuple,
) -> None:
    """Make `app.openapi()` return the completed document (built once, then cached until
    `spaces()`, the loaded models, changes). `is_open(path)`: the paths that need no API
    key; paths under `admin_prefix` always need one (an admin key)."""
    infer = app.openapi
    built_for: list[tuple[ModelSpace, ...]] = []  # the spaces the cached document states

    def required(path: str) -> bool:
        return bool(settings.api_keys) or path.startswith(admin_prefix)

    def openapi() -> dict[str, Any]:
        now = spaces()
        if built_for != [now]:
            app.openapi_schema = None  # FastAPI's cache: infer() builds afresh
            built_for[:] = [now]
        if app.openapi_schema is None:
            doc = infer()  # FastAPI caches it in app.openapi_schema; completed in place
            _add_components(doc)
            _apply_limits(doc, settings)
            schemas = doc["components"]["schemas"]
            add_model_rules(schemas, now)
            add_token_rules(schemas, token_encodings())
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

    images = {"images": some(s.max_images, IMAGE), "files": some(s.max_images)}
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
        "OpenAITextInput": {"text": text},
        "OpenAIImageInput": {"image": IMAGE},
        "CreateCollectionRequest": {
            "name": {"pattern": NAME_PATTERN, "maxLength": MAX_NAME_CHARS},
            "dim": {"maximum": MAX_DIM},
        },
        "SetAliasRequest": {"collection": {"pattern": NAME_PATTERN, "maxLength": MAX_NAME_CHARS}},
        "IndexSpecModel": {
            name: index_param
            for name in ("auto_threshold", "nlist", "nprobe", "ef_construction", "ef_search")
        },
        "UpsertRequest": {"items": some(s.max_items)},
        "UpsertForm": {
            "files": some(s.max_items),
            "ids": {"maxItems": s.max_items, "items": ITEM_ID},
            "metadata": {"maxItems": s.max_items},
        },
        "ItemIn": {"text": text, "image": IMAGE, "vector": VECTOR, "source": SOURCE},
        "DeleteItemsRequest": {"ids": some(s.max_items)},
        "SearchRequest": {"queries": some(s.max_queries), "k": {"minimum": 1, "maximum": s.max_k}},
        "SearchForm": {
            "k": {"minimum": 1, "maximum": s.max_k},
            "texts": {"maxItems": s.max_queries, "items": text},
            "files": {"maxItems": s.max_queries},
        },
        "Query": {"text": text, "image": IMAGE, "vector": VECTOR},
        "DuplicatesRequest": {"max_items": {"maximum": s.max_duplicate_scan}},
    }


# Which keywords apply to which JSON type (a limit on `str | list[str]` splits in two).
_KEYWORDS = {
    "array": {"minItems", "maxItems", "uniqueItems", "items", "not"},
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
    _add_filter(schemas)
    _constrain_path_parameters(doc)


def _constrain_path_parameters(doc: dict[str, Any]) -> None:
    """A collection's `name` as check_name takes it; an `item_id` never the literal path
    segment of the delete operation (GET .../items/delete is not an item's read)."""
    name_param = {"pattern": NAME_PATTERN, "maxLength": MAX_NAME_CHARS}
    for op in _operations(doc):
        for param in op.get("parameters", []):
            if param["in"] != "path":
                continue
            if param["name"] in ("name", "alias"):
                _constrain(param["schema"], name_param)
            elif param["name"] == "item_id":
                param["schema"]["not"] = {"const": RESERVED_ITEM_PATH}


# -- the metadata filter (contrastkit.service.index.filters) ---------------------------------
_SCALAR = {"type": ["string", "number", "boolean"]}


def filter_schema() -> dict[str, Any]:
    """The JSON Schema of a filter as parse_filter reads it: field -> a value (equality)
    or {operator: operand}. Only its total of conditions, JSON Schema cannot bound."""
    operands: dict[str, Any] = {op: {"type": "number"} for op in RANGE_OPS}
    operands |= {
        "$eq": _SCALAR,
        "$in": {"type": "array", "maxItems": MAX_IN_VALUES, "items": _SCALAR},
        "$exists": {"type": "boolean"},
    }
    condition = {
        "type": "object",
        "minProperties": 1,
        "properties": operands,
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "title": "Filter",
        "description": "Items whose metadata meets every condition: field: value (equal), "
        'or field: {operator: operand}, e.g. {"label": "cat", "year": {"$gte": 2000}}. '
        f"At most {MAX_CONDITIONS} conditions in all (else 422 `invalid_filter`).",
        "maxProperties": MAX_CONDITIONS,
        "propertyNames": {"minLength": 1, "pattern": "^[^$]"},
        "additionalProperties": {"anyOf": [_SCALAR, condition]},
    }


def _add_filter(schemas: dict[str, Any]) -> None:
    """The Filter component, and the `where` of searches (and the `filter` of duplicate
    scans) pointing at it."""
    if "SearchRequest" not in schemas:  # the collections are off
        return
    schemas["Filter"] = filter_schema()
    for component, name in (("SearchRequest", "where"), ("DuplicatesRequest", "filter")):
        if component in schemas:
            field = schemas[component]["properties"][name]
            field["anyOf"] = [{"$ref": REF.format(model="Filter")}, {"type": "null"}]


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
