"""Python clients for the service: `ContrastiveClient` (sync) and `AsyncContrastiveClient`.

    with ContrastiveClient("http://127.0.0.1:8000", api_key="...") as client:
        emb = client.embed_texts(["a cat", "a dog"])      # emb.vectors: float32 [2, dim]
        best = client.classify(["cat.jpg"], ["cat", "dog"])[0].top.label
        client.create_collection("photos")
        client.add("photos", ["cat"], images=["cat.jpg"], metadata=[{"kind": "pet"}])
        hits = client.search("photos", text="a cat", k=5)  # [SearchHit(id, score, metadata)]

Both classes are thin: every request is built and every response parsed by the module-level
helpers below, so the two behave identically. Any non-2xx answer raises `ServiceError`
(status, the server's machine-readable code and its message); connection failures and
timeouts propagate as httpx errors.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import quote

import httpx
import numpy as np
import numpy.typing as npt
from PIL import Image

__all__ = [
    "AsyncContrastiveClient",
    "AsyncHttpClient",
    "Classification",
    "CollectionInfo",
    "ContrastiveClient",
    "Embeddings",
    "HttpClient",
    "ImageInput",
    "Item",
    "LabelScore",
    "SearchHit",
    "ServiceError",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0

ImageInput = str | os.PathLike[str] | bytes | Image.Image
"""An image to send: a file path (read as bytes), encoded file bytes, or a PIL image (sent
as PNG)."""

VectorInput = Sequence[float] | npt.NDArray[Any]
"""One raw vector: a sequence of floats or a 1-d array (the server L2-normalises it)."""


# -- what `http=` accepts -----------------------------------------------------------------
# Structural, so that httpx.Client and clients of compatible libraries both fit: starlette's
# TestClient subclasses httpx2.Client when httpx2 is installed, which is no httpx.Client.

_Files = list[tuple[str, tuple[str, bytes, str]]]


class _Response(Protocol):
    """The part of httpx.Response the clients read."""

    @property
    def status_code(self) -> int: ...
    @property
    def is_success(self) -> bool: ...
    @property
    def text(self) -> str: ...
    @property
    def reason_phrase(self) -> str: ...
    def json(self, **kwargs: Any) -> Any: ...


class HttpClient(Protocol):
    """A blocking HTTP client like httpx.Client (or FastAPI's TestClient)."""

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = ...,
        data: dict[str, str] | None = ...,
        files: _Files | None = ...,
        headers: dict[str, str] | None = ...,
    ) -> _Response: ...
    def close(self) -> None: ...


class AsyncHttpClient(Protocol):
    """An asyncio HTTP client like httpx.AsyncClient."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = ...,
        data: dict[str, str] | None = ...,
        files: _Files | None = ...,
        headers: dict[str, str] | None = ...,
    ) -> _Response: ...
    async def aclose(self) -> None: ...


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Embeddings:
    """Embeddings of n inputs, in request order.

    `vectors` is float32 [n, dim], each row L2-normalised (so `a @ b.T` is cosine similarity).
    """

    model: str
    dim: int
    vectors: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


@dataclass(frozen=True)
class LabelScore:
    """One label for one image: `probability` is the softmax over all requested labels of
    logit_scale * cosine; `score` is the raw cosine similarity in [-1, 1]."""

    label: str
    probability: float
    score: float


@dataclass(frozen=True)
class Classification:
    """The labels for the image at `index` of the request, best first (at most top_k)."""

    index: int
    ranking: list[LabelScore] = field(default_factory=list)

    @property
    def top(self) -> LabelScore:
        """The most probable label."""
        return self.ranking[0]


@dataclass(frozen=True)
class CollectionInfo:
    """A collection as the server describes it (see service.index.types.CollectionInfo).

    `index` is the index spec ({"kind": "auto"|"flat"|"ivf"|"hnsw", ...}); `active_index`
    is what serves searches now; `status` is "ok" or how the collection was recovered.
    """

    name: str
    model_id: str
    dim: int
    count: int
    index: dict[str, Any]
    active_index: str
    created_at: str
    status: str = "ok"
    log_records: int = 0


@dataclass(frozen=True)
class SearchHit:
    """One search result: `score` is the cosine similarity of the query and the item."""

    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Item:
    """One stored item; `vector` (float32 [dim], unit norm) only when asked for."""

    id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: npt.NDArray[np.float32] | None = None


class ServiceError(Exception):
    """A non-2xx answer: HTTP `status`, the server's `code` (e.g. "invalid_template"),
    its human `message`, and any structured `detail` (e.g. validation errors)."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(status, code, message, detail)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


# -- requests (shared by both clients) ----------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """Everything httpx needs for one call; built once, sent by either client."""

    method: str
    path: str
    json: Any = None
    data: dict[str, str] | None = None
    files: _Files | None = None


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _reject_scalar(items: object, what: str) -> None:
    """A lone str/bytes/path/image is a sequence only by accident: ask for a list."""
    if isinstance(items, str | bytes | os.PathLike | Image.Image):
        raise TypeError(f"{what} must be a sequence (e.g. a list), not a single {type(items)}")


def _image_file(image: ImageInput, index: int) -> tuple[str, bytes, str]:
    """One image -> a multipart file tuple (filename, content, content type)."""
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        return f"image{index}.png", buf.getvalue(), "image/png"
    if isinstance(image, bytes | bytearray | memoryview):
        return f"image{index}", bytes(image), "application/octet-stream"
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return path.name or f"image{index}", path.read_bytes(), "application/octet-stream"
    raise TypeError(f"images[{index}]: expected a path, bytes or a PIL image, got {type(image)}")


def _image_files(images: Sequence[ImageInput]) -> _Files:
    _reject_scalar(images, "images")
    return [("files", _image_file(img, i)) for i, img in enumerate(images)]


def _embed_texts_request(texts: Sequence[str]) -> _Request:
    _reject_scalar(texts, "texts")
    return _Request("POST", "/v1/embed/text", json={"texts": list(texts)})


def _embed_images_request(images: Sequence[ImageInput]) -> _Request:
    files = _image_files(images)
    if not files:  # httpx sends no body for zero files; JSON lets the server say "empty".
        return _Request("POST", "/v1/embed/image", json={"images": []})
    return _Request("POST", "/v1/embed/image", files=files)


def _classify_request(
    images: Sequence[ImageInput],
    labels: Sequence[str],
    templates: Sequence[str] | None,
    top_k: int | None,
) -> _Request:
    _reject_scalar(labels, "labels")
    if templates is not None:
        _reject_scalar(templates, "templates")
    files = _image_files(images)
    if not files:  # as in _embed_images_request: let the server report the empty input
        body: dict[str, Any] = {"images": [], "labels": list(labels)}
        if templates is not None:
            body["templates"] = list(templates)
        if top_k is not None:
            body["top_k"] = top_k
        return _Request("POST", "/v1/classify", json=body)
    # List fields travel as one JSON-array string each (see service.api.payload.list_field).
    data = {"labels": json.dumps(list(labels))}
    if templates is not None:
        data["templates"] = json.dumps(list(templates))
    if top_k is not None:
        data["top_k"] = str(top_k)
    return _Request("POST", "/v1/classify", data=data, files=files)


_MODELS = _Request("GET", "/v1/models")
_READY = _Request("GET", "/readyz")


# -- collections: requests -----------------------------------------------------------------

_COLLECTIONS = "/v1/collections"
_LIST_COLLECTIONS = _Request("GET", _COLLECTIONS)
_QUERY_KINDS = ("text", "image", "vector", "id")


def _collection_path(name: str, *rest: str) -> str:
    """/v1/collections/<name>/<rest...>; every segment percent-encoded whole, "/" included
    (item ids are often file paths)."""
    return "/".join([_COLLECTIONS, *(quote(part, safe="") for part in (name, *rest))])


def _image_base64(image: ImageInput, index: int) -> str:
    return base64.b64encode(_image_file(image, index)[1]).decode("ascii")


def _vector_list(vector: VectorInput, what: str) -> list[float]:
    arr = np.asarray(vector, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected one vector (1-d), got shape {arr.shape}")
    return [float(x) for x in arr]


def _create_collection_request(
    name: str,
    index: str | Mapping[str, Any] | None,
    model_id: str | None,
    dim: int | None,
) -> _Request:
    body: dict[str, Any] = {"name": name}
    if index is not None:  # "hnsw" is short for {"kind": "hnsw"}
        body["index"] = {"kind": index} if isinstance(index, str) else dict(index)
    if model_id is not None:
        body["model_id"] = model_id
    if dim is not None:
        body["dim"] = dim
    return _Request("POST", _COLLECTIONS, json=body)


def _add_request(
    collection: str,
    ids: Sequence[str],
    texts: Sequence[str] | None,
    images: Sequence[ImageInput] | None,
    vectors: Sequence[VectorInput] | npt.NDArray[Any] | None,
    metadata: Sequence[Mapping[str, Any]] | None,
) -> _Request:
    given = [
        (k, v)
        for k, v in (("text", texts), ("image", images), ("vector", vectors))
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError("add: give exactly one of texts, images or vectors")
    kind, values = given[0]
    _reject_scalar(ids, "ids")
    _reject_scalar(values, f"{kind}s")
    if kind == "image":
        payload: list[Any] = [_image_base64(img, i) for i, img in enumerate(values)]
    elif kind == "vector":
        payload = [_vector_list(v, f"vectors[{i}]") for i, v in enumerate(values)]
    else:
        payload = list(values)
    if len(payload) != len(ids):
        raise ValueError(f"add: {len(ids)} ids but {len(payload)} {kind}s")
    if metadata is not None and len(metadata) != len(ids):
        raise ValueError(f"add: {len(ids)} ids but {len(metadata)} metadata objects")
    items: list[dict[str, Any]] = []
    for i, (id_, value) in enumerate(zip(ids, payload, strict=True)):
        item: dict[str, Any] = {"id": id_, kind: value}
        if metadata is not None:
            item["metadata"] = dict(metadata[i])
        items.append(item)
    return _Request("POST", _collection_path(collection, "items"), json={"items": items})


def _delete_items_request(collection: str, ids: Sequence[str]) -> _Request:
    _reject_scalar(ids, "ids")
    return _Request(
        "POST", _collection_path(collection, "items", "delete"), json={"ids": list(ids)}
    )


def _get_item_request(collection: str, id_: str, include_vector: bool) -> _Request:
    query = "?include_vector=true" if include_vector else ""
    return _Request("GET", _collection_path(collection, "items", id_) + query)


def _query(query: Mapping[str, Any], index: int) -> dict[str, Any]:
    """{"text"|"image"|"vector"|"id": value} -> its JSON form (images base64)."""
    if not isinstance(query, Mapping):
        raise TypeError(
            f"queries[{index}]: expected a dict like {{'text': ...}}, got {type(query)}"
        )
    given = [k for k in _QUERY_KINDS if query.get(k) is not None]
    unknown = set(query) - set(_QUERY_KINDS)
    if len(given) != 1 or unknown:
        raise ValueError(f"queries[{index}]: give exactly one of text, image, vector or id")
    kind = given[0]
    value = query[kind]
    if kind == "image":
        return {"image": _image_base64(value, index)}
    if kind == "vector":
        return {"vector": _vector_list(value, f"queries[{index}]")}
    return {kind: value}


def _search_request(
    collection: str,
    queries: Sequence[Mapping[str, Any]],
    k: int,
    where: Mapping[str, Any] | None,
) -> _Request:
    if isinstance(queries, Mapping):
        raise TypeError("queries must be a list of dicts; for one query use search()")
    body: dict[str, Any] = {"queries": [_query(q, i) for i, q in enumerate(queries)], "k": k}
    if where is not None:
        body["where"] = dict(where)
    return _Request("POST", _collection_path(collection, "search"), json=body)


def _search_one_request(
    collection: str,
    text: str | None,
    image: ImageInput | None,
    vector: VectorInput | None,
    id_: str | None,
    k: int,
    where: Mapping[str, Any] | None,
) -> _Request:
    query = {"text": text, "image": image, "vector": vector, "id": id_}
    return _search_request(
        collection, [{q: v for q, v in query.items() if v is not None}], k, where
    )


# -- responses (shared by both clients) ---------------------------------------------------


def _error(response: _Response) -> ServiceError:
    """A non-2xx response -> ServiceError, from {"error": {...}} or else the raw text."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        message = err.get("message")
        return ServiceError(
            response.status_code,
            err["code"],
            message if isinstance(message, str) else str(message),
            err.get("detail"),
        )
    text = response.text.strip() or response.reason_phrase
    return ServiceError(response.status_code, "http_error", text, body)


def _checked(response: _Response) -> Any:
    """The decoded JSON body of a 2xx response; raises ServiceError otherwise."""
    if not response.is_success:
        raise _error(response)
    return response.json()


def _parse_embeddings(body: Any) -> Embeddings:
    """{"model", "dim", "embeddings": [n][dim]} -> Embeddings with float32 [n, dim]."""
    dim = int(body["dim"])
    vectors = np.asarray(body["embeddings"], dtype=np.float32).reshape(-1, dim)
    return Embeddings(model=str(body["model"]), dim=dim, vectors=vectors)


def _parse_classify(body: Any) -> list[Classification]:
    """{"results": [{"index", "ranking": [{"label", "probability", "score"}]}]} -> list."""
    return [
        Classification(
            index=int(r["index"]),
            ranking=[
                LabelScore(str(s["label"]), float(s["probability"]), float(s["score"]))
                for s in r["ranking"]
            ],
        )
        for r in body["results"]
    ]


def _parse_models(body: Any) -> list[dict[str, Any]]:
    """{"object": "list", "data": [model card, ...]} -> the model cards."""
    return list(body["data"])


def _parse_collection(body: Any) -> CollectionInfo:
    """CollectionInfo.to_dict() of the server -> CollectionInfo."""
    return CollectionInfo(
        name=str(body["name"]),
        model_id=str(body["model_id"]),
        dim=int(body["dim"]),
        count=int(body["count"]),
        index=dict(body["index"]),
        active_index=str(body["active_index"]),
        created_at=str(body["created_at"]),
        status=str(body.get("status", "ok")),
        log_records=int(body.get("log_records", 0)),
    )


def _parse_collections(body: Any) -> list[CollectionInfo]:
    """{"collections": [CollectionInfo...]} -> list."""
    return [_parse_collection(c) for c in body["collections"]]


def _parse_upserted(body: Any) -> int:
    """{"upserted": n, "count": total} -> n."""
    return int(body["upserted"])


def _parse_deleted(body: Any) -> int:
    """{"deleted": n_present, "count": total} -> n_present."""
    return int(body["deleted"])


def _parse_item(body: Any) -> Item:
    """{"id", "metadata", "vector"?} -> Item (vector float32 [dim] or None)."""
    vector = body.get("vector")
    return Item(
        id=str(body["id"]),
        metadata=dict(body.get("metadata") or {}),
        vector=None if vector is None else np.asarray(vector, dtype=np.float32),
    )


def _parse_search(body: Any) -> list[list[SearchHit]]:
    """{"results": [[{"id", "score", "metadata"}...] per query]} -> hits per query."""
    return [
        [SearchHit(str(h["id"]), float(h["score"]), dict(h.get("metadata") or {})) for h in hits]
        for hits in body["results"]
    ]


# -- clients ------------------------------------------------------------------------------


class ContrastiveClient:
    """Blocking client over httpx.Client.

    Pass `http` to reuse an existing client (an httpx.Client, FastAPI's TestClient, or
    anything with the same `request`/`close`, see HttpClient); its base URL, timeout and
    transport are then used as they are, and `close()` leaves it open. Otherwise one is
    created from `base_url`, `timeout` (seconds) and `transport`, and closed by `close()` /
    leaving the `with` block.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        *,
        http: HttpClient | None = None,
    ) -> None:
        self._owns_http = http is None
        self._http: HttpClient = (
            http
            if http is not None
            else httpx.Client(base_url=base_url, timeout=timeout, transport=transport)
        )
        self._headers = _auth_headers(api_key)

    def _send(self, req: _Request) -> _Response:
        return self._http.request(
            req.method,
            req.path,
            json=req.json,
            data=req.data,
            files=req.files,
            headers=self._headers,
        )

    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        """n texts -> Embeddings with vectors float32 [n, dim]."""
        return _parse_embeddings(_checked(self._send(_embed_texts_request(texts))))

    def embed_images(self, images: Sequence[ImageInput]) -> Embeddings:
        """n images (paths, encoded bytes or PIL images) -> Embeddings, vectors [n, dim]."""
        return _parse_embeddings(_checked(self._send(_embed_images_request(images))))

    def classify(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        top_k: int | None = None,
    ) -> list[Classification]:
        """n images x L labels -> n Classifications, each ranking min(top_k, L) labels best
        first. `templates` hold "{}" where the label goes; None: the model's default set."""
        req = _classify_request(images, labels, templates, top_k)
        return _parse_classify(_checked(self._send(req)))

    def models(self) -> list[dict[str, Any]]:
        """The loaded model's cards (id, dim, capabilities, logit_scale, ...)."""
        return _parse_models(_checked(self._send(_MODELS)))

    def ready(self) -> bool:
        """True when the model is loaded and the server answers requests (GET /readyz 200)."""
        return self._send(_READY).status_code == 200

    # -- collections (similarity search) --------------------------------------------------

    def create_collection(
        self,
        name: str,
        index: str | Mapping[str, Any] | None = None,
        model_id: str | None = None,
        dim: int | None = None,
    ) -> CollectionInfo:
        """Create a collection. `index`: a kind ("auto", "flat", "ivf", "hnsw") or a spec
        dict ({"kind": "hnsw", "m": 32, ...}); None: the server's default ("auto").
        model_id/dim default to the loaded model's; give both for raw vectors of another
        space. ServiceError 409 `collection_exists` if the name is taken."""
        req = _create_collection_request(name, index, model_id, dim)
        return _parse_collection(_checked(self._send(req)))

    def list_collections(self) -> list[CollectionInfo]:
        """Every collection, by name."""
        return _parse_collections(_checked(self._send(_LIST_COLLECTIONS)))

    def describe_collection(self, name: str) -> CollectionInfo:
        """One collection; ServiceError 404 `collection_not_found` when there is none."""
        return _parse_collection(_checked(self._send(_Request("GET", _collection_path(name)))))

    def delete_collection(self, name: str) -> None:
        """Delete a collection and everything in it."""
        _checked(self._send(_Request("DELETE", _collection_path(name))))

    def add(
        self,
        collection: str,
        ids: Sequence[str],
        texts: Sequence[str] | None = None,
        images: Sequence[ImageInput] | None = None,
        vectors: Sequence[VectorInput] | npt.NDArray[Any] | None = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Add or replace items -> how many were upserted (a repeated id counts once: the
        last wins). Give exactly one of texts, images (paths, bytes or PIL images, sent
        base64) or vectors ([n, dim]); `metadata` holds one JSON object per id."""
        req = _add_request(collection, ids, texts, images, vectors, metadata)
        return _parse_upserted(_checked(self._send(req)))

    def delete_items(self, collection: str, ids: Sequence[str]) -> int:
        """Remove items -> how many of them were present (unknown ids are ignored)."""
        return _parse_deleted(_checked(self._send(_delete_items_request(collection, ids))))

    def get_item(self, collection: str, id: str, include_vector: bool = False) -> Item:
        """One item; ServiceError 404 `item_not_found` when the id is not there."""
        req = _get_item_request(collection, id, include_vector)
        return _parse_item(_checked(self._send(req)))

    def search(
        self,
        collection: str,
        text: str | None = None,
        image: ImageInput | None = None,
        vector: VectorInput | None = None,
        id: str | None = None,
        k: int = 10,
        where: Mapping[str, Any] | None = None,
    ) -> list[SearchHit]:
        """The k items nearest one query (exactly one of text, image, vector or the id of a
        stored item), best first; `where` keeps items whose metadata has all its values."""
        req = _search_one_request(collection, text, image, vector, id, k, where)
        return _parse_search(_checked(self._send(req)))[0]

    def search_many(
        self,
        collection: str,
        queries: Sequence[Mapping[str, Any]],
        k: int = 10,
        where: Mapping[str, Any] | None = None,
    ) -> list[list[SearchHit]]:
        """Several queries in one request, each a dict with one of "text", "image",
        "vector" or "id" -> the hits of each, in order."""
        req = _search_request(collection, queries, k, where)
        return _parse_search(_checked(self._send(req)))

    def close(self) -> None:
        """Close the underlying httpx.Client, unless it was passed in as `http`."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncContrastiveClient:
    """Asyncio client over httpx.AsyncClient; the same methods as ContrastiveClient, as
    coroutines. `http` reuses an existing httpx.AsyncClient or the like (see
    AsyncHttpClient), which `aclose()` leaves open.

    Image paths are read synchronously when a request is built (local files, small).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        http: AsyncHttpClient | None = None,
    ) -> None:
        self._owns_http = http is None
        self._http: AsyncHttpClient = (
            http
            if http is not None
            else httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)
        )
        self._headers = _auth_headers(api_key)

    async def _send(self, req: _Request) -> _Response:
        return await self._http.request(
            req.method,
            req.path,
            json=req.json,
            data=req.data,
            files=req.files,
            headers=self._headers,
        )

    async def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        """n texts -> Embeddings with vectors float32 [n, dim]."""
        return _parse_embeddings(_checked(await self._send(_embed_texts_request(texts))))

    async def embed_images(self, images: Sequence[ImageInput]) -> Embeddings:
        """n images (paths, encoded bytes or PIL images) -> Embeddings, vectors [n, dim]."""
        return _parse_embeddings(_checked(await self._send(_embed_images_request(images))))

    async def classify(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        top_k: int | None = None,
    ) -> list[Classification]:
        """n images x L labels -> n Classifications, each ranking min(top_k, L) labels best
        first. `templates` hold "{}" where the label goes; None: the model's default set."""
        req = _classify_request(images, labels, templates, top_k)
        return _parse_classify(_checked(await self._send(req)))

    async def models(self) -> list[dict[str, Any]]:
        """The loaded model's cards (id, dim, capabilities, logit_scale, ...)."""
        return _parse_models(_checked(await self._send(_MODELS)))

    async def ready(self) -> bool:
        """True when the model is loaded and the server answers requests (GET /readyz 200)."""
        return (await self._send(_READY)).status_code == 200

    # -- collections (similarity search) --------------------------------------------------

    async def create_collection(
        self,
        name: str,
        index: str | Mapping[str, Any] | None = None,
        model_id: str | None = None,
        dim: int | None = None,
    ) -> CollectionInfo:
        """Create a collection. `index`: a kind ("auto", "flat", "ivf", "hnsw") or a spec
        dict ({"kind": "hnsw", "m": 32, ...}); None: the server's default ("auto").
        model_id/dim default to the loaded model's; give both for raw vectors of another
        space. ServiceError 409 `collection_exists` if the name is taken."""
        req = _create_collection_request(name, index, model_id, dim)
        return _parse_collection(_checked(await self._send(req)))

    async def list_collections(self) -> list[CollectionInfo]:
        """Every collection, by name."""
        return _parse_collections(_checked(await self._send(_LIST_COLLECTIONS)))

    async def describe_collection(self, name: str) -> CollectionInfo:
        """One collection; ServiceError 404 `collection_not_found` when there is none."""
        return _parse_collection(
            _checked(await self._send(_Request("GET", _collection_path(name))))
        )

    async def delete_collection(self, name: str) -> None:
        """Delete a collection and everything in it."""
        _checked(await self._send(_Request("DELETE", _collection_path(name))))

    async def add(
        self,
        collection: str,
        ids: Sequence[str],
        texts: Sequence[str] | None = None,
        images: Sequence[ImageInput] | None = None,
        vectors: Sequence[VectorInput] | npt.NDArray[Any] | None = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Add or replace items -> how many were upserted (a repeated id counts once: the
        last wins). Give exactly one of texts, images (paths, bytes or PIL images, sent
        base64) or vectors ([n, dim]); `metadata` holds one JSON object per id."""
        req = _add_request(collection, ids, texts, images, vectors, metadata)
        return _parse_upserted(_checked(await self._send(req)))

    async def delete_items(self, collection: str, ids: Sequence[str]) -> int:
        """Remove items -> how many of them were present (unknown ids are ignored)."""
        return _parse_deleted(_checked(await self._send(_delete_items_request(collection, ids))))

    async def get_item(self, collection: str, id: str, include_vector: bool = False) -> Item:
        """One item; ServiceError 404 `item_not_found` when the id is not there."""
        req = _get_item_request(collection, id, include_vector)
        return _parse_item(_checked(await self._send(req)))

    async def search(
        self,
        collection: str,
        text: str | None = None,
        image: ImageInput | None = None,
        vector: VectorInput | None = None,
        id: str | None = None,
        k: int = 10,
        where: Mapping[str, Any] | None = None,
    ) -> list[SearchHit]:
        """The k items nearest one query (exactly one of text, image, vector or the id of a
        stored item), best first; `where` keeps items whose metadata has all its values."""
        req = _search_one_request(collection, text, image, vector, id, k, where)
        return _parse_search(_checked(await self._send(req)))[0]

    async def search_many(
        self,
        collection: str,
        queries: Sequence[Mapping[str, Any]],
        k: int = 10,
        where: Mapping[str, Any] | None = None,
    ) -> list[list[SearchHit]]:
        """Several queries in one request, each a dict with one of "text", "image",
        "vector" or "id" -> the hits of each, in order."""
        req = _search_request(collection, queries, k, where)
        return _parse_search(_checked(await self._send(req)))

    async def aclose(self) -> None:
        """Close the underlying httpx.AsyncClient, unless it was passed in as `http`."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
