"""Opening a collection backend: the one door from the rest of the service to the engines.

The callers choose everything (the service from its Settings, in `service.state`); nothing
here reads the environment. Each engine's package, and qdrant-client with it, is imported
only when that engine is opened, so a FAISS service never loads qdrant-client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from service.index.backend import CollectionBackend

# QdrantConfig is what a caller builds to choose a Qdrant; its module imports nothing of
# qdrant-client, so this import stays light.
from service.index.qdrant.connection import QdrantConfig

__all__ = ["BackendKind", "QdrantConfig", "folder_in_use", "open_backend"]

BackendKind = Literal["faiss", "qdrant"]


def open_backend(
    kind: BackendKind,
    root: Path,
    qdrant: QdrantConfig | None = None,
    snapshot_every: int = 20_000,
    device: str | None = None,
) -> CollectionBackend:
    """The backend of `kind`: the embedded store (FAISS) in the folder `root`, with a
    snapshot every `snapshot_every` log records and exact search on `device`; or the Qdrant
    that `qdrant` names (required for that kind)."""
    if kind == "qdrant":
        if qdrant is None:
            raise ValueError("the qdrant backend needs a QdrantConfig: a url, or a local path")
        from service.index.qdrant.backend import QdrantBackend

        return QdrantBackend(qdrant)
    from service.index.embedded.backend import FaissBackend

    return FaissBackend.open(root, snapshot_every, device)


def folder_in_use(kind: BackendKind, root: Path) -> bool:
    """Whether another process (a running server) holds the embedded store's folder `root`:
    the lock is taken and let go at once, importing neither FAISS nor torch, so a caller can
    refuse before it loads anything. False for Qdrant, and for a folder not yet made."""
    if kind != "faiss" or not root.is_dir():
        return False
    from service.index.embedded.folder_lock import StoreLockedError, lock_folder

    try:
        lock_folder(root).close()  # closing the handle releases the lock
    except StoreLockedError:
        return True
    return False
