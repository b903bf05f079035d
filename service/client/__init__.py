"""Python clients for the service: `ContrastiveClient` (sync) and `AsyncContrastiveClient`.

    with ContrastiveClient("http://127.0.0.1:8000", api_key="...") as client:
        emb = client.embed_texts(["a cat", "a dog"])      # emb.vectors: float32 [2, dim]
        best = client.classify(["cat.jpg"], ["cat", "dog"])[0].top.label
        client.create_collection("photos")
        client.add("photos", ["cat"], images=["cat.jpg"], metadata=[{"kind": "pet"}])
        matches = client.search("photos", text="a cat", k=5)  # [SearchMatch(id, score, ...)]

Both classes are thin: every request is built and every response parsed by the one shared
layer (`_requests`, whose functions give each method its signature and docstring), so the
two behave identically. Any non-2xx answer raises `ServiceError` (status, the server's
machine-readable code and its message); a refused connection, a timeout or a connection
lost before the answer raises `ServiceUnreachableError`, naming the URL and what happened
(chained from the httpx error). Both are `ContrastiveError`s.
"""

from contrastkit.service.client._transport import (
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    AsyncHttpClient,
    HttpClient,
)
from contrastkit.service.client.aio import AsyncContrastiveClient
from contrastkit.service.client.sync import ContrastiveClient
from contrastkit.service.client.types import (
    Classification,
    CollectionSummary,
    ContrastiveError,
    Embeddings,
    ImageInput,
    Item,
    RankedLabel,
    SearchMatch,
    ServiceError,
    ServiceUnreachableError,
    VectorInput,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT",
    "AsyncContrastiveClient",
    "AsyncHttpClient",
    "Classification",
    "CollectionSummary",
    "ContrastiveClient",
    "ContrastiveError",
    "Embeddings",
    "HttpClient",
    "ImageInput",
    "Item",
    "RankedLabel",
    "SearchMatch",
    "ServiceError",
    "ServiceUnreachableError",
    "VectorInput",
]
