"""Where a Qdrant backend's collections live: a server, a local folder, or memory.

Built by the caller (the service from its Settings) and handed to the backend factory;
qdrant-client is imported only when a client is made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

# no "-" in a prefix: so no prefix's collections ("P-name") look like another prefix's
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{0,31}$")


@dataclass(frozen=True)
class QdrantConfig:
    """Where the collections live: a server (`url`), else local mode in `path`, else memory.

    timeout: seconds per request (connecting included). prefix: namespaces our Qdrant
    collections, so a shared server can hold other applications' too."""

    url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    path: Path | None = None
    timeout: int = 10
    prefix: str = "contrastive"
    upsert_batch: int = 512

    def __post_init__(self) -> None:
        if self.url is not None and self.path is not None:
            raise ValueError("give a Qdrant url or a local path, not both")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"the Qdrant url must start with http:// or https://: {self.url!r}")
        if not PREFIX_RE.match(self.prefix):
            raise ValueError(f"invalid Qdrant collection prefix {self.prefix!r}")
        if self.timeout < 1 or self.upsert_batch < 1:
            raise ValueError("timeout and upsert_batch must be at least 1")

    @property
    def where(self) -> str:
        """Where the data is, for messages (never the key)."""
        if self.url:
            return self.url
        return f"local Qdrant storage {self.path}" if self.path else "in-memory local Qdrant"

    def client(self) -> QdrantClient:
        """A client; no request is made until the first call."""
        from qdrant_client import QdrantClient

        if self.url:
            return QdrantClient(
                url=self.url, api_key=self.api_key, timeout=self.timeout, check_compatibility=False
            )
        if self.path:
            return QdrantClient(path=str(self.path))
        return QdrantClient(location=":memory:")
