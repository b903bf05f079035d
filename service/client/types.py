"""What the clients take and return: input aliases, result types and ServiceError.

The result types are named apart from the server's own
(`contrastkit.service.index.types.CollectionInfo` and `Hit`,
`contrastkit.service.schemas.collections.SearchHit`,
`contrastkit.service.schemas.embeddings.LabelScore`), so code that touches both sides never has to
alias one of them on import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

__all__ = [
    "Classification",
    "CollectionSummary",
    "ContrastiveError",
    "Embeddings",
    "ImageInput",
    "Item",
    "RankedLabel",
    "SearchMatch",
    "ServiceError",
    "ServiceUnreachableError",
    "VectorInput",
]

ImageInput = str | os.PathLike[str] | bytes | Image.Image
"""An image to send: a file path (read as bytes), encoded file bytes, or a PIL image (sent
as PNG)."""

VectorInput = Sequence[float] | npt.NDArray[Any]
"""One raw vector: a sequence of floats or a 1-d array (the server L2-normalises it)."""


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
class RankedLabel:
    """One label for one image: `probability` is the softmax over all requested labels of
    logit_scale * cosine; `score` is the raw cosine similarity in [-1, 1]."""

    label: str
    probability: float
    score: float


@dataclass(frozen=True)
class Classification:
    """The labels for the image at `index` of the request, best first (at most top_k)."""

    index: int
    ranking: list[RankedLabel] = field(default_factory=list)

    @property
    def top(self) -> RankedLabel:
        """The most probable label."""
        return self.ranking[0]


@dataclass(frozen=True)
class CollectionSummary:
    """A collection as the server describes it (see contrastkit.service.index.types.CollectionInfo).

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
class SearchMatch:
    """One search result: `score` is the cosine similarity of the query and the item."""

    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # where the item came from, when stored with one


@dataclass(frozen=True, eq=False)
class Item:
    """One stored item; `vector` (float32 [dim], unit norm) only when asked for."""

    id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: npt.NDArray[np.float32] | None = None
    source: str | None = None  # where the item came from, when stored with one


class ContrastiveError(Exception):
    """Any failed call of the clients: the server's refusal (ServiceError) or no answer
    from it (ServiceUnreachableError). Catch this to handle both."""


class ServiceError(ContrastiveError):
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


class ServiceUnreachableError(ContrastiveError):
    """No answer from the server: the connection was refused or timed out, the host name
    did not resolve, or the connection broke before the answer. `url` is what was asked
    (method and URL), `reason` what happened; the message says both and what to check,
    and the HTTP library's own error is its `__cause__`. After a timeout or a broken
    connection the request may have run."""

    def __init__(self, url: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason
