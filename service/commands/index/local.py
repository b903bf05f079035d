"""In-process work for `contrastive index`: the collection backend the settings select,
opened here, and LocalTarget (the encoder loaded here too)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contrastkit.service.commands.index.images import ImageFile, read_image
from contrastkit.service.commands.index.options import settings_of

if TYPE_CHECKING:
    from contrastkit.service.index.backend import CollectionBackend, CollectionHandle
    from contrastkit.service.settings import Settings
    from contrastkit.training.encoders import Encoder


def open_backend_here(settings: Settings, name: str, must_exist: bool) -> CollectionBackend:
    """The collection backend the settings select, opened in this process; with
    `must_exist`, "collection_not_found" for a FAISS collection `name` that is missing,
    found out without opening (and so creating) the collections folder. An alias `name`
    is found in the opened folder: aliases are the backend's to read."""
    from contrastkit.service.index.types import CollectionError
    from contrastkit.service.state import open_collections

    folder = Path(settings.collections_dir)
    missing = CollectionError("collection_not_found", f"no collection named {name!r} in {folder}")
    if settings.collections_backend != "faiss" or not must_exist or (folder / name).is_dir():
        return open_collections(settings)
    if not folder.is_dir():
        raise missing
    store = open_collections(settings)
    if name not in store.aliases():
        store.close()
        raise missing
    return store


class LocalTarget:
    """In-process: the encoder and the collection backend the settings name, here."""

    def __init__(self, args: argparse.Namespace, create: bool) -> None:
        from contrastkit.service.index.types import CollectionError
        from contrastkit.training.encoders import load_encoder

        settings = settings_of(args)
        self.max_pixels = settings.max_image_pixels
        self.thumbnail_size = args.thumbnail_size if getattr(args, "thumbnails", False) else 0
        self.store: CollectionBackend = open_backend_here(settings, args.collection, not create)
        self.encoder: Encoder = load_encoder(settings.model, settings.pretrained, settings.device)
        try:
            self.col: CollectionHandle = self.store.get(args.collection)
        except CollectionError as e:
            if e.code != "collection_not_found" or not create:
                raise
            self.store.create(args.collection, self.encoder.model_id, self.encoder.embed_dim)
            self.col = self.store.get(args.collection)
        if self.col.model_id != self.encoder.model_id:
            raise CollectionError(
                "model_mismatch",
                f"collection {self.col.name!r} holds embeddings of {self.col.model_id!r}, "
                f"but the model loaded is {self.encoder.model_id!r} (pass --model)",
            )

    def present(self, ids: list[str]) -> set[str]:
        return {i for i in ids if self.col.get(i) is not None}

    def load(self, path: Path) -> tuple[Any, Any]:
        """-> (the model's input tensor, the decoded image: large enough for the model and
        for a thumbnail)."""
        size = max(self.encoder.info.preprocess.size, self.thumbnail_size)
        _, image = read_image(path, self.max_pixels, size)
        return self.encoder.preprocess_image(image), image

    def upsert(self, files: list[ImageFile], warn: Callable[[str], None]) -> int:
        import torch

        pixels: torch.Tensor = torch.stack([f.payload for f in files])
        vectors = self.encoder.encode_image_tensors(pixels).numpy()
        return self.col.upsert(
            [f.id for f in files],
            vectors,
            [f.metadata for f in files],
            [f.source for f in files],
        )

    def search(
        self, text: str, k: int, where: dict[str, Any] | None
    ) -> list[tuple[str, float, Any]]:
        query = self.encoder.encode_texts([text]).numpy()
        return [(h.id, h.score, h.metadata) for h in self.col.search(query, k, where)[0]]

    @property
    def count(self) -> int:
        return self.col.count()

    def close(self) -> None:
        self.store.close()
