"""Fixtures of the collection tests: each engine's backend, opened in the test's temp
folder (Qdrant in qdrant-client's local mode) and closed after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contrastkit.service.index.embedded.backend import FaissBackend


@pytest.fixture
def faiss_backend(tmp_path: Path) -> Iterator[FaissBackend]:
    b = FaissBackend.open(tmp_path / "faiss", device="cpu")
    yield b
    b.close()


@pytest.fixture
def qdrant_backend(tmp_path: Path) -> Iterator[Any]:
    """A QdrantBackend in tmp_path/qdrant (the test is skipped without qdrant-client)."""
    pytest.importorskip("qdrant_client")
    from contrastkit.service.index.qdrant.backend import QdrantBackend
    from contrastkit.service.index.qdrant.connection import QdrantConfig

    b = QdrantBackend(QdrantConfig(path=tmp_path / "qdrant"))
    yield b
    b.close()
