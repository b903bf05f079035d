"""Rules of the OpenAPI document that tie one field to another: the ones that depend on the
models served, and those of token-id inputs. contrastkit.service.api.openapi_docs adds them to the
components it has built; each is a JSON Schema `if`/`then`, so that the document refuses
what the server refuses and no more (a fuzzer holds it to both).

The model rules change when the admin API loads, replaces or unloads a model: the document
is built again whenever `served_spaces` changes (openapi_docs.install).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from contrastkit.service.runtime.served import ServedModels


@dataclass(frozen=True)
class ModelSpace:
    """A loaded model as the document needs it: the names a request may give it, its id
    (the space of a collection), and the dimension of its vectors."""

    names: tuple[str, ...]
    model_id: str
    dim: int


def served_spaces(models: ServedModels) -> tuple[ModelSpace, ...]:
    """The loaded models, in serving order (one still loading has no known dimension yet:
    the server answers 503 for it meanwhile, and states no rule)."""
    return tuple(
        ModelSpace(tuple(sorted(m.names)), m.loaded.model_id, m.loaded.encoder.embed_dim)
        for m in models
        if m.loaded is not None
    )


def _when(field: str, names: Iterable[str], then: dict[str, Any]) -> dict[str, Any]:
    """`if` the body gives `field` as one of `names`, `then` holds."""
    return {
        "if": {"required": [field], "properties": {field: {"enum": sorted(names)}}},
        "then": {"properties": then},
    }


def add_model_rules(schemas: dict[str, Any], spaces: Iterable[ModelSpace]) -> None:
    """- a collection made with a loaded model's id and a dimension (a collection of raw
      vectors) must have that model's dimension (collection_inputs.collection_space:
      `wrong_dimension`);
    - /v1/embeddings' `dimensions`, when given, must be the named model's (`unsupported_
      dimensions`: the server does not shorten vectors)."""
    spaces = list(spaces)
    create = schemas.get("CreateCollectionRequest")
    if create is not None:
        create.setdefault("allOf", []).extend(
            _when("model_id", [s.model_id], {"dim": {"const": s.dim}}) for s in spaces
        )
    openai = schemas.get("OpenAIEmbeddingRequest")
    if openai is not None:
        openai.setdefault("allOf", []).extend(
            _when("model", s.names, {"dimensions": {"anyOf": [{"const": s.dim}, {"type": "null"}]}})
            for s in spaces
        )


# `input` as token ids: one array of integers (one text), or an array of such arrays. The
# request schema's other shapes (strings, objects) never hold an integer or an array.
TOKEN_INPUT = {
    "type": "array",
    "minItems": 1,
    "items": {"type": ["integer", "array"]},
}


def token_encodings() -> list[str] | None:
    """The encodings tiktoken has (token ids are decoded with one), or None without it."""
    try:
        import tiktoken
    except ImportError:
        return None
    return list(tiktoken.list_encoding_names())


def add_token_rules(schemas: dict[str, Any], encodings: list[str] | None) -> None:
    """Token ids are text: `modality` must be "text" with them, and `token_encoding`, when
    given, one of tiktoken's encodings (contrastkit.service.api.token_ids). Without tiktoken the
    server reads no token ids at all (`tokens_not_supported`): the document then refuses them."""
    openai = schemas.get("OpenAIEmbeddingRequest")
    if openai is None:
        return
    then: dict[str, Any]
    if encodings is None:
        then = {"properties": {"input": False}}
    else:
        encoding = {"anyOf": [{"enum": encodings}, {"type": "null"}]}
        then = {"properties": {"modality": {"const": "text"}, "token_encoding": encoding}}
    rule = {"if": {"required": ["input"], "properties": {"input": TOKEN_INPUT}}, "then": then}
    openai.setdefault("allOf", []).append(rule)
