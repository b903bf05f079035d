"""The OpenAPI document of the model routes (service/api/openapi_docs.py and the routes):
every reference resolves, bodies read by hand are documented as components, and a body
declared in a route's dependency is documented as the route's own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from contrastkit.service.settings import Settings

Factory = Callable[..., TestClient]


@pytest.fixture
def spec(fake_app_factory: Factory) -> dict[str, Any]:
    return fake_app_factory().get("/openapi.json").json()  # type: ignore[no-any-return]


def test_the_openapi_references_all_resolve(spec: dict[str, Any]) -> None:
    """openapi_extra bodies are components: no reference points at a missing schema."""
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    schemas = spec["components"]["schemas"]
    assert (
        refs and [r for r in refs if r.removeprefix("#/components/schemas/") not in schemas] == []
    )
    for path in ("/v1/embed/image", "/v1/classify"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]
        ref = body["application/json"]["schema"]["$ref"]
        assert "images" in schemas[ref.removeprefix("#/components/schemas/")]["properties"]


def test_the_classify_bodies_state_the_labels_times_templates_limit(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    limit = Settings().max_classify_texts
    for component in ("ClassifyRequest", "ClassifyForm"):
        text = schemas[component]["description"]
        assert f"must not exceed {limit}" in text and "too_many_items" in text


@pytest.mark.parametrize(
    ("path", "component"),
    [("/v1/embed/text", "EmbedTextRequest"), ("/v1/embeddings", "OpenAIEmbeddingRequest")],
)
def test_a_body_read_by_the_model_dependency_is_the_routes_documented_body(
    spec: dict[str, Any], path: str, component: str
) -> None:
    """The dependency that resolves the model declares the JSON body: it stays one
    required body of the request model's own schema, not a field of a combined one."""
    op = spec["paths"][path]["post"]
    assert op["requestBody"] == {
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{component}"}}},
        "required": True,
    }


def test_the_model_dependencies_document_no_parameters(spec: dict[str, Any]) -> None:
    """They read the request (its body, its disconnect), never a query parameter."""
    operations = [
        spec["paths"][path][method]
        for path, method in [
            ("/v1/embed/text", "post"),
            ("/v1/embed/image", "post"),
            ("/v1/classify", "post"),
            ("/v1/embeddings", "post"),
            ("/v1/models", "get"),
            ("/v1/collections", "post"),
        ]
    ]
    assert [op["operationId"] for op in operations if op.get("parameters")] == []
