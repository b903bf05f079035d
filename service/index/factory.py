"""Opening a collection backend: the one door from the rest of the service to the engines.

The callers choose everything (the service from its Settings, in `contrastkit.service.state`);
nothing here reads the environment. Each engine's package, and qdrant-client with it, is imported
only when that engine is opened, so a FAISS service never loads qdrant-client.

FAISS is not a base dependency: the `cpu` extra installs faiss-cpu, the `gpu` extra
faiss-gpu (both provide the module `faiss`; pip cannot swap one base dependency for
another through an extra). Without it the embedded store is FaissMissingError, a
"backend_unavailable" that says what to install; Qdrant needs no FAISS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from contrastkit.service.index.backend import CollectionBackend

# QdrantConfig is what a caller builds to choose a Qdrant; its module imports nothing of
# qdrant-client, so this import stays light.
from contrastkit.service.index.qdrant.connection import QdrantConfig
from contrastkit.service.index.types import CollectionError

__all__ = [
    "FAISS_INSTALL",
    "BackendKind",
    "FaissMissingError",
    "QdrantConfig",
    "folder_in_use",
    "open_backend",
    "require_faiss",
]

BackendKind = Literal["faiss", "qdrant"]

FAISS_INSTALL = (
    "pip install 'contrastkit[cpu]' (or 'contrastkit[gpu]' on CUDA), "
    "or use collections_backend=qdrant"
)


class FaissMissingError(CollectionError):
    """The embedded store cannot open: the module `faiss` is not installed (or does not
    import). "backend_unavailable" (503 over HTTP), naming the extra to install."""

    def __init__(self, message: str) -> None:
        super().__init__("backend_unavailable", message)


def require_faiss() -> None:
    """FaissMissingError unless `import faiss` works (it is imported now, once)."""
    try:
        import faiss  # noqa: F401
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name == "faiss":
            raise FaissMissingError(f"FAISS is not installed: {FAISS_INSTALL}") from e
        why = f"FAISS is installed but does not import ({e}): reinstall it, {FAISS_INSTALL}"
        raise FaissMissingError(why) from e


def open_backend(
    kind: BackendKind,
    root: Path,
    qdrant: QdrantConfig | None = None,
    snapshot_every: int = 20_000,
    device: str | None = None,
) -> CollectionBackend:
    """The backend of `kind`: the embedded store (FAISS) in the folder `root`, with a
    snapshot every `snapshot_every` log records and exact search on `device`; or the Qdrant
    that `qdrant` names (required for that kind). FaissMissingError for the embedded store
    without FAISS installed."""
    if kind == "qdrant":
        if qdrant is None:
            raise ValueError("the qdrant backend needs a QdrantConfig: a url, or a local path")
        from contrastkit.service.index.qdrant.backend import QdrantBackend

        return QdrantBackend(qdrant)
    require_faiss()
    from contrastkit.service.index.embedded.backend import FaissBackend

    return FaissBackend.open(root, snapshot_every, device)


def folder_in_use(kind: BackendKind, root: Path) -> bool:
    """Whether another process (a running server) holds the embedded store's folder `root`:
    the lock is taken and let go at once, importing neither FAISS nor torch, so a caller can
    refuse before it loads anything. False for Qdrant, and for a folder not yet made."""
    if kind != "faiss" or not root.is_dir():
        return False
    from contrastkit.service.index.embedded.folder_lock import StoreLockedError, lock_folder

    try:
        lock_folder(root).close()  # closing the handle releases the lock
    except StoreLockedError:
        return True
    return False
