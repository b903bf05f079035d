"""A collection's config as stored in the sidecar collection ("PREFIX_collections"): one
vectorless point per collection, its payload versioned by FORMAT_VERSION."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qdrant_client import models

from contrastkit.service.index.types import IndexSpec

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CollectionConfig:
    """A collection's model id, dimension, index spec and creation time: one point of the
    sidecar collection, written by `create` and read by every open."""

    name: str
    model_id: str
    dim: int
    spec: IndexSpec
    created_at: str

    def payload(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "model_id": self.model_id,
            "dim": self.dim,
            "index": self.spec.to_dict(),
            "created_at": self.created_at,
        }

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> CollectionConfig:
        """A stored config -> CollectionConfig; ValueError saying what is wrong with it."""
        version = payload.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"its config has format_version {version!r}, not {FORMAT_VERSION}")
        try:
            return cls(
                str(payload["name"]),
                str(payload["model_id"]),
                int(payload["dim"]),
                IndexSpec.from_dict(dict(payload["index"])),
                str(payload["created_at"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"its config is unreadable ({type(e).__name__}: {e})") from e

    @property
    def search_params(self) -> models.SearchParams:
        return models.SearchParams(hnsw_ef=self.spec.ef_search, exact=self.spec.kind == "flat")
