"""Texts and image bytes -> embeddings, through the batchers: what the routes embed with.

A full queue or a device out of memory becomes a CapacityError (retryable, with a
retry-after); the HTTP edge picks its status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import TypeVar

import torch

from service.domain_errors import CapacityError
from service.runtime.batcher import Batcher, QueueFullError
from service.runtime.images import decode_image
from training.encoders import Encoder

T = TypeVar("T")


class TextEmbedder:
    """Texts -> [n, d] embeddings on the text batcher."""

    def __init__(self, batcher: Batcher[str]) -> None:
        self.batcher = batcher

    async def __call__(self, texts: list[str]) -> torch.Tensor:
        return await submit(self.batcher, texts)


class ImageEmbedder:
    """Image file bytes -> [n, d] embeddings: decoded and preprocessed in the decode pool
    (in parallel, off the event loop), then batched on the model."""

    def __init__(
        self,
        encoder: Encoder,
        batcher: Batcher[torch.Tensor],
        decode_pool: Executor,
        max_pixels: int,
    ) -> None:
        self.encoder = encoder
        self.batcher = batcher
        self.decode_pool = decode_pool
        self.max_pixels = max_pixels

    async def __call__(self, blobs: list[bytes]) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        prep = [
            loop.run_in_executor(self.decode_pool, self._prepare, blob, i)
            for i, blob in enumerate(blobs)
        ]
        return await submit(self.batcher, await asyncio.gather(*prep))

    def _prepare(self, blob: bytes, index: int) -> torch.Tensor:
        size = self.encoder.info.preprocess.size
        image = decode_image(blob, self.max_pixels, draft_size=size, index=index)
        return self.encoder.preprocess_image(image)


async def submit(batcher: Batcher[T], items: Sequence[T]) -> torch.Tensor:
    """`batcher.submit`, with its two transient failures as CapacityError."""
    try:
        return await batcher.submit(items)
    except torch.OutOfMemoryError as e:
        # The batch, not the request, was too big for the device right now: retryable.
        raise CapacityError(
            "out_of_memory",
            "the device ran out of memory; retry, or send fewer items",
            retry_after=1,
        ) from e
    except QueueFullError as e:
        raise CapacityError(
            "overloaded", f"the server is at capacity ({e}); retry shortly", retry_after=1
        ) from e
