"""RemoteTarget: `contrastive index add|search` over HTTP, a running server embedding and
storing; images travel as their files' bytes, in requests of at most REQUEST_BYTES."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contrastkit.service.commands.index.images import ImageFile, read_image

if TYPE_CHECKING:
    from contrastkit.service.client import ContrastiveClient

REQUEST_BYTES = 8 * 1024 * 1024  # raw image bytes per HTTP request (base64 adds a third)
_SKIPPABLE = {"image_decode_failed", "image_too_large", "payload_too_large", "invalid_base64"}


class RemoteTarget:
    """Over HTTP: a running server embeds and stores."""

    def __init__(self, args: argparse.Namespace, create: bool, url: str) -> None:
        from contrastkit.service.client import ContrastiveClient, ServiceError
        from contrastkit.service.commands.index.options import settings_of

        self.name = args.collection
        # the key this machine's server is configured with, when none is given
        key = args.api_key or next(iter(settings_of(args).api_keys), None)
        self.client: ContrastiveClient = ContrastiveClient(url, api_key=key)
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="index-check")
        try:
            self.client.describe_collection(self.name)
        except ServiceError as e:
            if e.code != "collection_not_found" or not create:
                self.close()
                raise
            self.client.create_collection(self.name)

    def _has(self, id_: str) -> bool:
        from contrastkit.service.client import ServiceError

        try:
            self.client.get_item(self.name, id_)
        except ServiceError as e:
            if e.code == "item_not_found":
                return False
            raise
        return True

    def present(self, ids: list[str]) -> set[str]:
        return {i for i, has in zip(ids, self.pool.map(self._has, ids), strict=True) if has}

    def load(self, path: Path) -> tuple[Any, Any]:
        """-> (the file's bytes, the decoded image). Decoded here too: a truncated file is
        skipped rather than failing a whole batch."""
        return read_image(path, sys.maxsize, 512)

    def upsert(self, files: list[ImageFile], warn: Callable[[str], None]) -> int:
        added, group_bytes = 0, 0
        group: list[ImageFile] = []
        for f in files:
            if group and group_bytes + f.size > REQUEST_BYTES:
                added += self._send(group, warn)
                group, group_bytes = [], 0
            group.append(f)
            group_bytes += f.size
        return added + (self._send(group, warn) if group else 0)

    def _send(self, files: list[ImageFile], warn: Callable[[str], None]) -> int:
        from contrastkit.service.client import ServiceError

        try:
            return self.client.add(
                self.name,
                [f.id for f in files],
                images=[f.payload for f in files],
                metadata=[f.metadata for f in files],
                sources=[f.source for f in files],
            )
        except ServiceError as e:
            if e.code not in _SKIPPABLE:
                raise
            if len(files) == 1:
                warn(f"skipping {files[0].path}: the server refused it ({e})")
                return 0
        return sum(self._send([f], warn) for f in files)  # find the one(s) refused

    def search(
        self, text: str, k: int, where: dict[str, Any] | None
    ) -> list[tuple[str, float, Any]]:
        hits = self.client.search(self.name, text=text, k=k, where=where)
        return [(h.id, h.score, h.metadata) for h in hits]

    @property
    def count(self) -> int:
        return self.client.describe_collection(self.name).count

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()
