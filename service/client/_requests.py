"""The API's operations, once for both clients.

Each public function here is one client method: it takes the method's parameters, checks
and encodes them, and returns the `Call` to send. Its signature and docstring *are* the
method's: `ContrastiveClient` and `AsyncContrastiveClient` are built from these functions
(see `adopt`), so the two classes cannot disagree on either.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy.typing as npt

from contrastkit.service.client import _encode, _parse
from contrastkit.service.client._transport import Call, Request, Response, json_body
from contrastkit.service.client.types import (
    Classification,
    CollectionSummary,
    Embeddings,
    ImageInput,
    Item,
    SearchMatch,
    VectorInput,
)

# Every one of these is a method of both client classes (tests/service/test_client_parity.py).
__all__ = [
    "add",
    "cancel_migration",
    "classify",
    "create_collection",
    "delete_collection",
    "delete_items",
    "describe_collection",
    "embed_images",
    "embed_texts",
    "get_item",
    "list_aliases",
    "list_collections",
    "load_model",
    "migration",
    "models",
    "ready",
    "remove_alias",
    "search",
    "search_many",
    "set_alias",
    "start_migration",
]

_COLLECTIONS = "/v1/collections"


def embed_texts(texts: Sequence[str]) -> Call[Embeddings]:
    """n texts -> Embeddings with vectors float32 [n, dim]."""
    _encode.reject_scalar(texts, "texts")
    return Call(
        Request("POST", "/v1/embed/text", json={"texts": list(texts)}),
        json_body(_parse.embeddings),
    )


def embed_images(images: Sequence[ImageInput]) -> Call[Embeddings]:
    """n images (paths, encoded bytes or PIL images) -> Embeddings, vectors [n, dim]."""
    files = _encode.image_files(images)
    if files:
        request = Request("POST", "/v1/embed/image", files=files)
    else:  # httpx sends no body for zero files; JSON lets the server say "empty".
        request = Request("POST", "/v1/embed/image", json={"images": []})
    return Call(request, json_body(_parse.embeddings))


def classify(
    images: Sequence[ImageInput],
    labels: Sequence[str],
    templates: Sequence[str] | None = None,
    top_k: int | None = None,
) -> Call[list[Classification]]:
    """n images x L labels -> n Classifications, each ranking min(top_k, L) labels best
    first. `templates` hold "{}" where the label goes; None: the model's default set."""
    _encode.reject_scalar(labels, "labels")
    if templates is not None:
        _encode.reject_scalar(templates, "templates")
    files = _encode.image_files(images)
    if files:
        # List fields travel as one JSON-array string each
        # (contrastkit.service.api.payload.list_field).
        data = {"labels": json.dumps(list(labels))}
        if templates is not None:
            data["templates"] = json.dumps(list(templates))
        if top_k is not None:
            data["top_k"] = str(top_k)
        request = Request("POST", "/v1/classify", data=data, files=files)
    else:  # as in embed_images: let the server report the empty input
        body: dict[str, Any] = {"images": [], "labels": list(labels)}
        if templates is not None:
            body["templates"] = list(templates)
        if top_k is not None:
            body["top_k"] = top_k
        request = Request("POST", "/v1/classify", json=body)
    return Call(request, json_body(_parse.classifications))


def models() -> Call[list[dict[str, Any]]]:
    """The loaded model's cards (id, dim, capabilities, logit_scale, ...)."""
    return Call(Request("GET", "/v1/models"), json_body(_parse.models))


def _is_ready(response: Response) -> bool:
    # Not json_body: a 503 while the model loads is an answer here, not an error.
    return response.status_code == 200


def ready() -> Call[bool]:
    """True when the model is loaded and the server answers requests (GET /readyz 200)."""
    return Call(Request("GET", "/readyz"), _is_ready, retry=False)


# -- collections (similarity search) ------------------------------------------------------


def _collection_path(name: str, *rest: str) -> str:
    """/v1/collections/<name>/<rest...>; every segment percent-encoded whole, "/" included
    (item ids are often file paths)."""
    return "/".join([_COLLECTIONS, *(quote(part, safe="") for part in (name, *rest))])


def create_collection(
    name: str,
    index: str | Mapping[str, Any] | None = None,
    model_id: str | None = None,
    dim: int | None = None,
) -> Call[CollectionSummary]:
    """Create a collection. `index`: a kind ("auto", "flat", "ivf", "hnsw", "ivfpq",
    "hnsw_sq8") or a spec dict ({"kind": "hnsw", "m": 32, ...}); None: the server's
    default ("auto").
    model_id/dim default to the loaded model's; give both for raw vectors of another
    space. ServiceError 409 `collection_exists` if the name is taken."""
    body: dict[str, Any] = {"name": name}
    if index is not None:  # "hnsw" is short for {"kind": "hnsw"}
        body["index"] = {"kind": index} if isinstance(index, str) else dict(index)
    if model_id is not None:
        body["model_id"] = model_id
    if dim is not None:
        body["dim"] = dim
    return Call(Request("POST", _COLLECTIONS, json=body), json_body(_parse.collection))


def list_collections() -> Call[list[CollectionSummary]]:
    """Every collection, by name."""
    return Call(Request("GET", _COLLECTIONS), json_body(_parse.collections))


def describe_collection(name: str) -> Call[CollectionSummary]:
    """One collection; ServiceError 404 `collection_not_found` when there is none."""
    return Call(Request("GET", _collection_path(name)), json_body(_parse.collection))


def delete_collection(name: str) -> Call[None]:
    """Delete a collection and everything in it."""
    return Call(Request("DELETE", _collection_path(name)), json_body(_parse.nothing))


def add(
    collection: str,
    ids: Sequence[str],
    texts: Sequence[str] | None = None,
    images: Sequence[ImageInput] | None = None,
    vectors: Sequence[VectorInput] | npt.NDArray[Any] | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    sources: Sequence[str | None] | None = None,
) -> Call[int]:
    """Add or replace items -> how many were upserted (a repeated id counts once: the
    last wins). Give exactly one of texts, images (paths, bytes or PIL images, sent
    base64) or vectors ([n, dim]); `metadata` holds one JSON object per id; `sources`
    where each came from (a path, URI or text, at most 2048 bytes; None: none)."""
    given = [
        (k, v)
        for k, v in (("text", texts), ("image", images), ("vector", vectors))
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError("add: give exactly one of texts, images or vectors")
    kind, values = given[0]
    _encode.reject_scalar(ids, "ids")
    _encode.reject_scalar(values, f"{kind}s")
    if kind == "image":
        payload: list[Any] = [_encode.image_base64(img, i) for i, img in enumerate(values)]
    elif kind == "vector":
        payload = [_encode.vector_list(v, f"vectors[{i}]") for i, v in enumerate(values)]
    else:
        payload = list(values)
    if len(payload) != len(ids):
        raise ValueError(f"add: {len(ids)} ids but {len(payload)} {kind}s")
    if metadata is not None and len(metadata) != len(ids):
        raise ValueError(f"add: {len(ids)} ids but {len(metadata)} metadata objects")
    if sources is not None and len(sources) != len(ids):
        raise ValueError(f"add: {len(ids)} ids but {len(sources)} sources")
    items: list[dict[str, Any]] = []
    for i, (id_, value) in enumerate(zip(ids, payload, strict=True)):
        item: dict[str, Any] = {"id": id_, kind: value}
        if metadata is not None:
            item["metadata"] = dict(metadata[i])
        if sources is not None and sources[i] is not None:
            item["source"] = sources[i]
        items.append(item)
    request = Request("POST", _collection_path(collection, "items"), json={"items": items})
    return Call(request, json_body(_parse.upserted))


def delete_items(collection: str, ids: Sequence[str]) -> Call[int]:
    """Remove items -> how many of them were present (unknown ids are ignored)."""
    _encode.reject_scalar(ids, "ids")
    path = _collection_path(collection, "items", "delete")
    return Call(Request("POST", path, json={"ids": list(ids)}), json_body(_parse.deleted))


def get_item(collection: str, id: str, include_vector: bool = False) -> Call[Item]:
    """One item; ServiceError 404 `item_not_found` when the id is not there. ValueError
    for the id `delete`, which no GET can name: its path is the delete operation's (search
    with {"id": "delete"} finds such an item)."""
    if id == "delete":
        raise ValueError(
            "an item whose id is 'delete' cannot be read by id: /items/delete is the path "
            "of the delete operation; search with the query {'id': 'delete'} instead"
        )
    path = _collection_path(collection, "items", id)
    if include_vector:
        path += "?include_vector=true"
    return Call(Request("GET", path), json_body(_parse.item))


def _search_request(
    collection: str,
    queries: Sequence[Mapping[str, Any]],
    k: int,
    where: Mapping[str, Any] | None,
) -> Request:
    if isinstance(queries, Mapping):
        raise TypeError("queries must be a list of dicts; for one query use search()")
    body: dict[str, Any] = {
        "queries": [_encode.query(q, i) for i, q in enumerate(queries)],
        "k": k,
    }
    if where is not None:
        body["where"] = dict(where)
    return Request("POST", _collection_path(collection, "search"), json=body)


def search(
    collection: str,
    text: str | None = None,
    image: ImageInput | None = None,
    vector: VectorInput | None = None,
    id: str | None = None,
    k: int = 10,
    where: Mapping[str, Any] | None = None,
) -> Call[list[SearchMatch]]:
    """The k items nearest one query (exactly one of text, image, vector or the id of a
    stored item), best first; `where` keeps items whose metadata has all its values."""
    given = {"text": text, "image": image, "vector": vector, "id": id}
    query = {kind: value for kind, value in given.items() if value is not None}
    return Call(_search_request(collection, [query], k, where), json_body(_parse.first_matches))


def search_many(
    collection: str,
    queries: Sequence[Mapping[str, Any]],
    k: int = 10,
    where: Mapping[str, Any] | None = None,
) -> Call[list[list[SearchMatch]]]:
    """Several queries in one request, each a dict with one of "text", "image",
    "vector" or "id" -> the matches of each, in order."""
    return Call(_search_request(collection, queries, k, where), json_body(_parse.matches))


# -- aliases ------------------------------------------------------------------------------

_ALIASES = "/v1/aliases"


def list_aliases() -> Call[dict[str, str]]:
    """Every alias -> the collection it points to."""
    return Call(Request("GET", _ALIASES), json_body(_parse.aliases))


def set_alias(alias: str, collection: str) -> Call[str | None]:
    """Point `alias` at `collection` (create it, or switch it atomically) -> the collection
    it pointed to before (None: new). Any collection route takes the alias as a name."""
    path = f"{_ALIASES}/{quote(alias, safe='')}"
    return Call(Request("PUT", path, json={"collection": collection}), json_body(_parse.previous))


def remove_alias(alias: str) -> Call[str]:
    """Remove an alias -> the collection it pointed to (which stays)."""
    path = f"{_ALIASES}/{quote(alias, safe='')}"
    return Call(Request("DELETE", path), json_body(_parse.alias_removed))


# -- the admin API (a client made with an admin key) ---------------------------------------
_ADMIN = "/v1/admin"


def load_model(reference: str, wait: float = 0) -> Call[dict[str, Any]]:
    """Load another model into the server (admin) -> the load operation (`status`
    loading, done or failed); `wait`: seconds to wait for it to end (at most 600)."""
    path = f"{_ADMIN}/models" + (f"?wait={wait:g}" if wait else "")
    return Call(Request("POST", path, json={"reference": reference}), json_body(_parse.anything))


def start_migration(
    collection: str,
    model: str,
    alias: str | None = None,
    new_name: str | None = None,
    allow_missing: bool = False,
    batch: int = 32,
) -> Call[dict[str, Any]]:
    """Move `collection` (or an alias) to `model`, a model the server serves (admin):
    rebuilt from the items' sources while it serves, then `alias` switched -> the
    migration's status (`state` running). Follow it with `migration(collection)`."""
    body: dict[str, Any] = {"collection": collection, "model": model, "batch": batch}
    if alias is not None:
        body["alias"] = alias
    if new_name is not None:
        body["new_name"] = new_name
    if allow_missing:
        body["allow_missing"] = True
    return Call(Request("POST", f"{_ADMIN}/migrations", json=body), json_body(_parse.anything))


def migration(name: str) -> Call[dict[str, Any]]:
    """The latest migration from or into collection `name`, or switching alias `name`
    (admin) -> its status: state, pass, done, total, missing, ..."""
    path = f"{_ADMIN}/migrations/{quote(name, safe='')}"
    return Call(Request("GET", path), json_body(_parse.anything))


def cancel_migration(name: str) -> Call[dict[str, Any]]:
    """Stop that migration after its current batch (admin) -> its status; starting it
    again resumes."""
    path = f"{_ADMIN}/migrations/{quote(name, safe='')}"
    return Call(Request("DELETE", path), json_body(_parse.anything))


# -- operations as methods ----------------------------------------------------------------


def adopt(method: Callable[..., Any], operation: Callable[..., Call[Any]], owner: str) -> None:
    """Make `method` (a generic `self, *args, **kwargs` forwarder defined in class `owner`)
    look like `operation` to help(), inspect and docs: its name, docstring and signature,
    with `self` first and the Call's result type as the return annotation."""
    signature = inspect.signature(operation, eval_str=True)
    (result,) = typing.get_args(signature.return_annotation)  # Call[T] -> T
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__name__ = operation.__name__
    method.__qualname__ = f"{owner}.{operation.__name__}"
    method.__doc__ = operation.__doc__
    # inspect.signature reads __signature__ first; typeshed does not declare it on callables.
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[this, *signature.parameters.values()],
        return_annotation=None if result is type(None) else result,
    )
