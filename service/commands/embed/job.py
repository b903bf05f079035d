"""The embed job: decode in a thread pool, embed in batches on one model, write parts.

Images go the way /v1/embed/image takes them (contrastkit.service.runtime.embedding.ImageEmbedder):
the file's bytes -> decode_image (same pixel limit, same JPEG draft size) ->
encoder.preprocess_image -> encoder.encode_image_tensors. So a vector written here is the
one the service returns for the same file.

Decoding (PIL, which releases the GIL) runs in `workers` threads, a bounded window of
images ahead of the model; the model runs in this thread. Nothing does torch arithmetic
in the decode threads (see contrastkit.training.encoders.preprocess.to_pixels).
"""

from __future__ import annotations

import io
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from contrastkit.service.commands.embed.parquet import PartWriter, Rows
from contrastkit.service.commands.embed.sources import Item, Skip

if TYPE_CHECKING:
    from contrastkit.training.encoders import Encoder

PartHook = Callable[[str | None], None]  # called after each committed part (its file)


@dataclass(frozen=True)
class Options:
    """How the job runs: images per model batch, rows per part, decode threads, the
    pixel limit (the service's max_image_pixels), and a stop after `max_parts` parts."""

    batch: int = 64
    part_rows: int = 10_000
    workers: int = 2
    max_pixels: int = 40_000_000
    max_parts: int | None = None
    device_decode: bool = False  # plain JPEGs decoded on the model's device, batched


@dataclass(frozen=True)
class Decoded:
    """One image ready for the model: uint8 [3, S, S] pixels (or, for the device decoder,
    the JPEG file itself as uint8 [nbytes]), and its metadata."""

    pixels: torch.Tensor
    metadata: dict[str, Any]


def prepare(
    item: Item, encoder: Encoder, max_pixels: int, device_decode: bool = False
) -> Decoded | Skip:
    """An item -> its pixels (as the service prepares an upload, device decoding
    included) or why it was skipped. Runs in the decode pool."""
    from PIL import Image

    from contrastkit.service.runtime.device_decode import as_jpeg_item, wants_device
    from contrastkit.service.runtime.images import ImageError, decode_image

    try:
        data = item.read()
    except FileNotFoundError as e:
        return Skip(item.id, "missing file", f"{item.source}: {e.strerror}")
    except OSError as e:
        return Skip(item.id, "unreadable file", f"{item.source}: {e}")
    size = encoder.info.preprocess.size
    try:
        if device_decode and wants_device(data, max_pixels):
            pixels = as_jpeg_item(data)  # decoded with its batch, on the device
        else:
            image = decode_image(data, max_pixels, draft_size=size, name="it")
            pixels = encoder.preprocess_image(image)
    except ImageError as e:
        reason = "too many pixels" if e.code == "image_too_large" else "not a readable image"
        return Skip(item.id, reason, f"{item.source}: {e.message}")
    # the size stored in the file: a JPEG decodes at a reduced (draft) scale
    width, height = Image.open(io.BytesIO(data)).size
    meta: dict[str, Any] = {"width": width, "height": height, "bytes": len(data)}
    if item.caption is not None:
        meta["caption"] = item.caption
    return Decoded(pixels, meta)


def decode_on_device(
    encoder: Encoder, max_pixels: int, batch: list[tuple[Item, Decoded]]
) -> tuple[list[tuple[Item, Decoded]], list[Skip]]:
    """The batch with its JPEG files (uint8 [nbytes], see prepare) decoded in one call on
    the encoder's device, as the service's device decoder does
    (contrastkit.service.runtime.device_decode) -> (the items with uint8 [3, S, S] pixels, on the
    device; Skips for the files that neither the device nor PIL could decode)."""
    if not any(d.pixels.dim() == 1 for _, d in batch):
        return batch, []
    from contrastkit.service.runtime.device_decode import DevicePixels

    pixels, failed = DevicePixels(encoder, max_pixels).pixels([d.pixels for _, d in batch])
    kept: list[tuple[Item, Decoded]] = []
    skips: list[Skip] = []
    for i, (item, d) in enumerate(batch):
        if i in failed:
            detail = f"{item.source}: neither the device nor PIL could decode it"
            skips.append(Skip(item.id, "not a readable image", detail))
        else:
            kept.append((item, Decoded(pixels[i], d.metadata)))
    return kept, skips


def decoded(
    items: Sequence[Item], fn: Callable[[Item], Decoded | Skip], workers: int, window: int
) -> Iterator[tuple[Item, Decoded | Skip]]:
    """(item, fn(item)) in the items' order, fn run in `workers` threads at most `window`
    items ahead of the consumer (so decoded pixels never pile up)."""
    with ThreadPoolExecutor(workers, thread_name_prefix="embed-decode") as pool:
        ahead: deque[tuple[Item, Future[Decoded | Skip]]] = deque()
        rest = iter(items)
        try:
            for item in rest:
                ahead.append((item, pool.submit(fn, item)))
                if len(ahead) >= window:
                    break
            while ahead:
                item, future = ahead.popleft()
                following = next(rest, None)
                if following is not None:
                    ahead.append((following, pool.submit(fn, following)))
                yield item, future.result()
        finally:
            pool.shutdown(cancel_futures=True)


class Job:
    """One run over `items` (those not done yet) into `writer`; `bar` counts items."""

    def __init__(
        self,
        encoder: Encoder,
        writer: PartWriter,
        options: Options,
        bar: Any = None,
        on_part: PartHook | None = None,
    ) -> None:
        self.encoder, self.writer, self.options = encoder, writer, options
        self.bar, self.on_part = bar, on_part
        self.rows = Rows()
        self.skips: list[Skip] = []
        self.embedded = 0
        self.parts = 0  # parts committed by this run
        self.seconds = 0.0

    def run(self, items: Sequence[Item]) -> bool:
        """Embed every item -> True when all were done, False when max_parts stopped it."""
        o = self.options
        start = time.perf_counter()
        batch: list[tuple[Item, Decoded]] = []
        try:
            for item, result in decoded(items, self._prepare, o.workers, 2 * o.batch):
                if isinstance(result, Skip):
                    self.skips.append(result)
                    if self.bar is not None:
                        self.bar.update(1)
                else:
                    batch.append((item, result))
                if len(batch) >= o.batch:
                    self._embed(batch)
                    batch = []
                if not self._flush(final=False):
                    return False
            self._embed(batch)
            return self._flush(final=True)
        finally:
            self.seconds += time.perf_counter() - start

    def _prepare(self, item: Item) -> Decoded | Skip:
        o = self.options
        return prepare(item, self.encoder, o.max_pixels, o.device_decode)

    def _embed(self, batch: list[tuple[Item, Decoded]]) -> None:
        """A batch -> float32 [b, d] unit vectors, queued for the next part."""
        batch = self._decode_on_device(batch)
        if not batch:
            return
        pixels = torch.stack([d.pixels for _, d in batch])
        vectors = self.encoder.encode_image_tensors(pixels).numpy().astype(np.float32)
        self.rows.ids += [item.id for item, _ in batch]
        self.rows.sources += [item.source for item, _ in batch]
        self.rows.metadata += [d.metadata for _, d in batch]
        self.rows.vectors.append(vectors)
        self.embedded += len(batch)
        if self.bar is not None:
            self.bar.update(len(batch))

    def _decode_on_device(self, batch: list[tuple[Item, Decoded]]) -> list[tuple[Item, Decoded]]:
        """decode_on_device, its skips counted with the others."""
        kept, skips = decode_on_device(self.encoder, self.options.max_pixels, batch)
        self.skips += skips
        if self.bar is not None and skips:
            self.bar.update(len(skips))
        return kept

    def _flush(self, final: bool) -> bool:
        """Commit every full part (at the end, what is left too) -> False once max_parts
        parts are committed."""
        n = self.options.part_rows
        while len(self.rows) >= n or (final and (len(self.rows) or self.skips)):
            head, self.rows = self.rows.split(min(n, len(self.rows)))
            name = self.writer.commit(head, self.skips)
            self.skips = []
            self.parts += 1
            if self.on_part is not None:
                self.on_part(name)
            if self.options.max_parts is not None and self.parts >= self.options.max_parts:
                return False
        return True
