"""The OpenAPI document states what the server enforces (issue 24, item 7): every limit
from the settings, the shape of names, ids, images, vectors and filters, the rules that tie
one field to another, and the item path that GET cannot name.

Each test walks the document the running app serves and, where a rule can be put to the
test, holds it against the server's own check on the same values: the document and the
server must agree both ways (a looser document gets schema-valid requests refused, a
stricter one gets schema-invalid ones accepted).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from contrastkit.service.api import openapi_docs, openapi_rules
from contrastkit.service.api.openapi_rules import ModelSpace
from contrastkit.service.app import create_app
from contrastkit.service.domain_errors import DomainError
from contrastkit.service.index.filters import OPERATORS, parse_filter
from contrastkit.service.index.types import MAX_ID_CHARS, check_name
from contrastkit.service.runtime.images import ImageError, decode_base64_image
from contrastkit.service.schemas.collections import IndexSpecModel, ItemIn, Query
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder

Factory = Callable[..., TestClient]
C = "/v1/collections"
# Limits unlike the defaults and unlike each other: each must come from its own setting.
LIMITS = Settings(
    max_texts=7,
    max_images=5,
    max_items=9,
    max_queries=4,
    max_k=33,
    max_text_chars=77,
    max_labels=6,
    max_templates=3,
)


@pytest.fixture
def client(fake_app_factory: Factory, tmp_path: Path) -> TestClient:
    settings = LIMITS.model_copy(update={"collections_dir": str(tmp_path)})
    return fake_app_factory(settings)


@pytest.fixture
def doc(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()  # type: ignore[no-any-return]


def schemas(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["components"]["schemas"]  # type: ignore[no-any-return]


def validator(doc: dict[str, Any], component: str) -> Draft202012Validator:
    """A validator of one component, its references resolved in the document."""
    root = {"$ref": f"#/components/schemas/{component}", "components": doc["components"]}
    return Draft202012Validator(root)


def matches(pattern: str, value: str) -> bool:
    """JSON Schema's reading of `pattern` (ECMA-262: `$` is the end of the text; Python's
    also matches before a final line break)."""
    return re.search(re.sub(r"\$$", r"\\Z", pattern), value) is not None


def prop(doc: dict[str, Any], component: str, name: str, kind: str = "array") -> dict[str, Any]:
    """A property's schema, the branch of type `kind` when it is `X | None`."""
    schema = schemas(doc)[component]["properties"][name]
    branches = schema.get("anyOf", [schema])
    return next(b for b in branches if b.get("type") == kind)  # type: ignore[no-any-return]


# -- counts and lengths from the settings ----------------------------------------------------
@pytest.mark.parametrize(
    ("component", "name", "setting"),
    [
        ("EmbedTextRequest", "texts", "max_texts"),
        ("EmbedImageRequest", "images", "max_images"),
        ("EmbedImageForm", "files", "max_images"),
        ("ClassifyRequest", "images", "max_images"),
        ("ClassifyRequest", "labels", "max_labels"),
        ("ClassifyRequest", "templates", "max_templates"),
        ("ClassifyForm", "files", "max_images"),
        ("ClassifyForm", "labels", "max_labels"),
        ("OpenAIEmbeddingRequest", "input", "max_texts"),
        ("UpsertRequest", "items", "max_items"),
        ("UpsertForm", "files", "max_items"),
        ("UpsertForm", "ids", "max_items"),
        ("UpsertForm", "metadata", "max_items"),
        ("DeleteItemsRequest", "ids", "max_items"),
        ("SearchRequest", "queries", "max_queries"),
        ("SearchForm", "texts", "max_queries"),
        ("SearchForm", "files", "max_queries"),
    ],
)
def test_every_list_states_the_count_the_server_allows(
    doc: dict[str, Any], component: str, name: str, setting: str
) -> None:
    assert prop(doc, component, name)["maxItems"] == getattr(LIMITS, setting)


def test_k_and_texts_state_their_bounds(doc: dict[str, Any]) -> None:
    for component in ("SearchRequest", "SearchForm"):
        k = prop(doc, component, "k", "integer")
        assert (k["minimum"], k["maximum"]) == (1, LIMITS.max_k)
    texts = [
        prop(doc, "EmbedTextRequest", "texts")["items"],
        prop(doc, "SearchForm", "texts")["items"],
        prop(doc, "ItemIn", "text", "string"),
        prop(doc, "Query", "text", "string"),
        prop(doc, "OpenAITextInput", "text", "string"),
    ]
    for text in texts:
        assert (text["minLength"], text["maxLength"]) == (1, LIMITS.max_text_chars)
        assert text["pattern"] == openapi_docs.TEXT_PATTERN


# -- names, ids and the item path ------------------------------------------------------------
NAMES = ["a", "0", "A.b-c_d", "a.", "a" * 64, "a" * 65, "", ".a", "-a", "_a", "a..b", "a b"]
NAMES += ["a/b", "é", "a\n", "a.-b"]


def _server_takes_name(name: str) -> bool:
    try:
        check_name(name)
    except DomainError:
        return False
    return True


def test_the_collection_name_is_the_servers_rule(doc: dict[str, Any]) -> None:
    params = [
        p["schema"]
        for path, ops in doc["paths"].items()
        if path.startswith(C)
        for op in ops.values()
        for p in op.get("parameters", [])
        if p["name"] == "name"
    ]
    assert len(params) >= 6  # describe, delete, items, delete items, get item, search
    created = prop(doc, "CreateCollectionRequest", "name", "string")
    for schema in [*params, created]:
        assert schema["maxLength"] == openapi_docs.MAX_NAME_CHARS
        for name in NAMES:
            stated = len(name) <= schema["maxLength"] and matches(schema["pattern"], name)
            assert stated == _server_takes_name(name), name


def test_item_ids_state_their_length(doc: dict[str, Any]) -> None:
    ids = prop(doc, "UpsertForm", "ids")["items"]
    assert (ids["minLength"], ids["maxLength"]) == (1, MAX_ID_CHARS)
    assert (ItemIn.model_json_schema()["properties"]["id"]["maxLength"]) == MAX_ID_CHARS


def test_no_item_id_is_the_delete_path(doc: dict[str, Any], client: TestClient) -> None:
    """/items/delete is the delete operation's path for every method: GET and OPTIONS there
    are 405 with `Allow: POST`, as the document says, and an item named "delete" is
    found by search and deleted by POST, not read by GET."""
    op = doc["paths"][f"{C}/{{name}}/items/{{item_id}}"]["get"]
    item_id = next(p for p in op["parameters"] if p["name"] == "item_id")
    assert item_id["schema"]["not"] == {"const": "delete"}
    assert "405" in op["responses"]
    assert list(doc["paths"][f"{C}/{{name}}/items/delete"]) == ["post"]

    client.post(C, json={"name": "c"}).raise_for_status()
    items = [{"id": i, "vector": [1.0] * 8} for i in ("delete", "deleted", "a/delete")]
    client.post(f"{C}/c/items", json={"items": items}).raise_for_status()
    for method in ("GET", "HEAD", "OPTIONS", "PUT"):
        r = client.request(method, f"{C}/c/items/delete")
        assert (r.status_code, r.headers["allow"]) == (405, "POST"), method
    for other in ("deleted", "a/delete"):  # ids that only begin or end with it are read
        assert client.get(f"{C}/c/items/{other}").json()["id"] == other
    hits = client.post(f"{C}/c/search", json={"queries": [{"id": "delete"}], "k": 3}).json()
    assert "delete" in [h["id"] for h in hits["results"][0]]
    assert client.post(f"{C}/c/items/delete", json={"ids": ["delete"]}).json()["deleted"] == 1


# -- images and vectors ----------------------------------------------------------------------
def _image_fields(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        prop(doc, "EmbedImageRequest", "images")["items"],
        prop(doc, "ClassifyRequest", "images")["items"],
        prop(doc, "ItemIn", "image", "string"),
        prop(doc, "Query", "image", "string"),
        prop(doc, "OpenAIImageInput", "image", "string"),
    ]


def _server_reads_base64(value: str) -> bool:
    """Whether the server gets bytes out of `value` (what it does before decoding them)."""
    try:
        return len(decode_base64_image(value)) > 0
    except ImageError:
        return False


BLOB = bytes(range(256)) * 3
ENCODED = base64.b64encode(BLOB).decode()
VALID_IMAGES = [
    ENCODED,
    base64.b64encode(b"ab").decode(),  # "==" padding
    base64.b64encode(b"abcd").decode(),  # "=" padding
    f"data:image/png;base64,{ENCODED}",
    f"DATA:;BASE64,{ENCODED}",
    "\n".join(ENCODED[i : i + 76] for i in range(0, len(ENCODED), 76)),  # line-wrapped
    f"  {ENCODED} ",
]
INVALID_IMAGES = ["", " ", "A", "AAA", "AA=", "=AAA", "http://example.com/cat.png"]
INVALID_IMAGES += ["data:image/png;base64,", "data://x;base64,AAAA", "AA AA A", "ab$d"]


def test_images_are_base64_as_the_server_reads_it(doc: dict[str, Any]) -> None:
    for field in _image_fields(doc):
        assert field["minLength"] == 1
        for value in VALID_IMAGES:
            assert matches(field["pattern"], value) and _server_reads_base64(value), value
        for value in INVALID_IMAGES:
            assert not matches(field["pattern"], value), value
            assert not _server_reads_base64(value), value


def test_multipart_files_are_images(doc: dict[str, Any]) -> None:
    for path in ("/v1/embed/image", "/v1/classify", f"{C}/{{name}}/items", f"{C}/{{name}}/search"):
        content = doc["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
        assert content["encoding"]["files"] == {"contentType": "image/*"}, path


@pytest.mark.parametrize("component", ["ItemIn", "Query"])
def test_vectors_are_never_all_zeros(doc: dict[str, Any], component: str) -> None:
    vector = prop(doc, component, "vector")
    assert (vector["minItems"], vector["not"]) == (1, {"items": {"const": 0}})
    check = Draft202012Validator(vector)
    assert check.is_valid([0.0, 1.0]) and not check.is_valid([0, 0.0]) and not check.is_valid([])


# -- rules across fields ---------------------------------------------------------------------
def _pydantic_takes(model: type[BaseModel], value: dict[str, Any]) -> bool:
    try:
        model.model_validate(value)
    except ValidationError:
        return False
    return True


SOURCES: list[dict[str, Any]] = [
    {},
    {"text": "cat"},
    {"vector": [1.0]},
    {"text": None, "vector": [1.0]},
    {"text": "cat", "image": "AAAA"},
    {"text": None, "image": None},
    {"id": "x"},
    {"id": "x", "text": "cat"},
]


@pytest.mark.parametrize("model", [ItemIn, Query])
def test_exactly_one_source_in_the_document_as_in_the_server(
    doc: dict[str, Any], model: type[BaseModel]
) -> None:
    check = validator(doc, model.__name__)
    for source in SOURCES:
        value = {"id": "x", **source} if model is ItemIn else source
        assert check.is_valid(value) == _pydantic_takes(model, value), value


def test_index_integers_are_json_integers(doc: dict[str, Any]) -> None:
    """8.0 is an integer to JSON Schema: the server takes it too."""
    check = validator(doc, "IndexSpecModel")
    for value in ({"pq_m": 8.0, "refine": 30.0}, {"pq_m": 0}, {"refine": 65}, {"refine": 2.5}):
        assert check.is_valid(value) == _pydantic_takes(IndexSpecModel, value), value


def test_a_dimension_given_with_a_loaded_models_id_must_be_its_own(
    doc: dict[str, Any], client: TestClient
) -> None:
    check = validator(doc, "CreateCollectionRequest")
    dim = FakeEncoder().embed_dim
    wrong = {"name": "w", "model_id": FakeEncoder().model_id, "dim": dim + 1}
    assert not check.is_valid(wrong)
    assert client.post(C, json=wrong).json()["error"]["code"] == "wrong_dimension"
    for body in ({**wrong, "dim": dim}, {"name": "r", "model_id": "other", "dim": 3}):
        assert check.is_valid(body)
        assert client.post(C, json=body).status_code == 201, body


def test_dimensions_must_be_the_named_models(doc: dict[str, Any], client: TestClient) -> None:
    check = validator(doc, "OpenAIEmbeddingRequest")
    model, dim = FakeEncoder().model_id, FakeEncoder().embed_dim
    for dimensions, status in ((dim, 200), (None, 200), (dim + 1, 422)):
        body = {"model": model, "input": "a cat", "dimensions": dimensions}
        assert check.is_valid(body) == (status == 200)
        assert client.post("/v1/embeddings", json=body).status_code == status


def test_token_ids_name_a_tiktoken_encoding_and_are_text(doc: dict[str, Any]) -> None:
    pytest.importorskip("tiktoken")
    check = validator(doc, "OpenAIEmbeddingRequest")
    model = FakeEncoder().model_id
    ids = {"model": model, "input": [[104, 105]]}
    assert check.is_valid(ids) and check.is_valid({**ids, "token_encoding": "cl100k_base"})
    assert not check.is_valid({**ids, "token_encoding": "nope"})
    assert not check.is_valid({**ids, "modality": "image"})
    # strings: token_encoding is not read, so any name goes (the server ignores it)
    assert check.is_valid({"model": model, "input": ["hi"], "token_encoding": "nope"})


def test_the_document_follows_the_models_served(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Built again when the loaded models change (the admin API loads and unloads them)."""
    served = [ModelSpace(("a",), "a", 4)]
    monkeypatch.setattr(openapi_rules, "served_spaces", lambda _: tuple(served))
    app = create_app(Settings(collections_dir=str(tmp_path)), encoder=FakeEncoder())

    def stated_dims() -> list[int]:
        rules = app.openapi()["components"]["schemas"]["CreateCollectionRequest"]["allOf"]
        return [r["then"]["properties"]["dim"]["const"] for r in rules if "enum" in str(r)]

    assert stated_dims() == [4]
    assert stated_dims() == [4]  # cached: the rules are not added twice
    served.append(ModelSpace(("b",), "b", 16))
    assert stated_dims() == [4, 16]


# -- filters ---------------------------------------------------------------------------------
FILTERS: list[Any] = [
    {},
    {"label": "cat"},
    {"n": 3, "ok": True, "x": 1.5},
    {"label": {"$in": ["cat", "dog", 3, False]}},
    {"year": {"$gte": 2000, "$lt": 2010}},
    {"caption": {"$exists": False}},
    {"label": {"$eq": "cat"}},
    {"label": None},
    {"label": ["cat"]},
    {"label": {}},
    {"label": {"$regex": "c.*"}},
    {"$or": [{"a": 1}]},
    {"": 1},
    {"year": {"$gt": "2000"}},
    {"year": {"$gt": True}},
    {"label": {"$in": "cat"}},
    {"label": {"$in": [None]}},
    {"label": {"$in": list(range(1025))}},
    {"caption": {"$exists": 1}},
    {"label": {"$eq": {"a": 1}}},
    ["label"],
    "label",
]


def _server_takes_filter(value: Any) -> bool:
    try:
        parse_filter(value)
    except DomainError:
        return False
    return True


def test_the_filter_schema_is_parse_filters_grammar(doc: dict[str, Any]) -> None:
    check = validator(doc, "Filter")
    condition = schemas(doc)["Filter"]["additionalProperties"]["anyOf"][1]
    assert set(condition["properties"]) == set(OPERATORS)  # each operator is documented
    for value in FILTERS:
        assert check.is_valid(value) == _server_takes_filter(value), value
    assert prop(doc, "SearchRequest", "where", "null") == {"type": "null"}
    where = schemas(doc)["SearchRequest"]["properties"]["where"]["anyOf"]
    assert {"$ref": "#/components/schemas/Filter"} in where
    assert schemas(doc)["SearchForm"]["properties"]["where"] == where[0]


def test_json_form_fields_are_declared_json(doc: dict[str, Any], client: TestClient) -> None:
    """Multipart fields holding JSON say so, and take what OpenAPI sends for an array of
    objects: one part per object (or, as before, one part holding the array)."""
    search = doc["paths"][f"{C}/{{name}}/search"]["post"]["requestBody"]["content"]
    upsert = doc["paths"][f"{C}/{{name}}/items"]["post"]["requestBody"]["content"]
    json_part = {"contentType": "application/json"}
    assert search["multipart/form-data"]["encoding"]["where"] == json_part
    assert upsert["multipart/form-data"]["encoding"]["metadata"] == json_part
    assert prop(doc, "UpsertForm", "metadata")["items"] == {"type": "object"}
    assert schemas(doc)["UpsertForm"]["required"] == ["files"]
    search_form = validator(doc, "SearchForm")
    assert not search_form.is_valid({}) and not search_form.is_valid({"texts": []})
    assert search_form.is_valid({"texts": ["cat"]}) and search_form.is_valid({"files": ["x"]})
