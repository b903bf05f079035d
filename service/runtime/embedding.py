"""Texts and image bytes -> embeddings, through the batchers: what the routes embed with.

A full batcher or a device out of memory becomes a CapacityError
(retryable, with a retry-after); the HTTP edge picks its status. Work whose client has
gone is cancelled (contrastkit.service.runtime.disconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Executor

import torch

from contrastkit.service.domain_errors import CapacityError
from contrastkit.service.runtime.batcher import Batcher, QueueFullError, Reservation, ServiceRate
from contrastkit.service.runtime.device_decode import as_jpeg_item, wants_device
from contrastkit.service.runtime.disconnect import while_client_waits
from contrastkit.service.runtime.images import ImageError, decode_base64_image, decode_image
from contrastkit.training.encoders import Encoder


class TextEmbedder:
    """Texts -> [n, d] embeddings on the text batcher."""

    def __init__(self, batcher: Batcher[str]) -> None:
        self.batcher = batcher

    async def __call__(self, texts: list[str]) -> torch.Tensor:
        with capacity_errors():
            return await while_client_waits(self.batcher.submit(texts))

    def refuse_when_full(self) -> None:
        """CapacityError `overloaded` when even one more text would be refused (before a
        request is read: contrastkit.service.api.shedding)."""
        with capacity_errors():
            self.batcher.check(1)


class DecodeGate:
    """Bounds the images handed to the decode pool and not yet decoded, so that decoded
    pixels never pile up beyond `limit` images: a request past it waits its turn (first
    come, first served). It does not refuse: every request that reaches it was admitted by
    the batcher already, whose limits bound how many can wait here, and refusing admitted
    work would turn a closed-loop client population into retries. An empty gate takes any
    request, so one request larger than `limit` still gets through.

    Used from the event loop only: plain counters need no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, n: int) -> bool:
        return self.in_use == 0 or self.in_use + n <= self.limit

    @contextlib.asynccontextmanager
    async def enter(self, n: int) -> AsyncIterator[None]:
        """Hold n places while the body runs, once they are free (in arrival order)."""
        if not self._waiting and self._fits(n):
            self.in_use += n
        else:
            turn = asyncio.get_running_loop().create_future()
            self._waiting.append((n, turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():  # granted as the caller left
                    self._leave(n)
                raise
        try:
            yield
        finally:
            self._leave(n)

    def _leave(self, n: int) -> None:
        self.in_use -= n
        while self._waiting:
            m, turn = self._waiting[0]
            if turn.done():  # its caller left while waiting
                self._waiting.popleft()
                continue
            if not self._fits(m):
                return
            self._waiting.popleft()
            self.in_use += m
            turn.set_result(None)


ImageSource = bytes | str  # a file's bytes, or (from JSON) its base64 or data: URL


class ImageEmbedder:
    """Images -> [n, d] embeddings: admitted by the batcher first, on their count alone (a
    refusal costs no decoding, not even of base64), then base64-decoded, decoded and
    preprocessed in the decode pool (in parallel, off the event loop, at most
    `max_decoding` images at a time; more wait their turn), then batched on the model.

    Admission counts the decoding too: a request waits for the images admitted before it
    to be decoded, then for its own, before its last chunk can be embedded. When decoding
    is the slower stage (large photos, few cores), that is most of its wait, and a limit
    on the model's queue alone would admit requests that then wait far past
    `max_queue_wait_ms`. The decode rate is measured like the model's (`decode_rate`:
    images per second of one decode thread, over `decode_workers` threads).
    """

    def __init__(
        self,
        encoder: Encoder,
        batcher: Batcher[torch.Tensor],
        decode_pool: Executor,
        max_pixels: int,
        max_decoding: int = 64,
        device_decode: bool = False,
        decode_workers: int = 1,
    ) -> None:
        self.encoder = encoder
        self.batcher = batcher
        self.decode_pool = decode_pool
        self.max_pixels = max_pixels
        self.gate = DecodeGate(max_decoding)
        # plain JPEGs travel undecoded to the batcher, whose function (a DevicePixels)
        # decodes them on the model's device: contrastkit.service.runtime.device_decode
        self.device_decode = device_decode
        self.decode_workers = max(1, decode_workers)
        self.decode_rate = ServiceRate()  # images per second of one decode thread
        self.undecoded = 0  # images admitted and not yet decoded

    def decode_wait(self, n: int) -> float:
        """Seconds until n more images would be decoded: those admitted before them and
        not yet decoded, then theirs, at the measured rate of every decode thread (0
        until a decode has been measured)."""
        per_thread = self.decode_rate.per_second
        if per_thread is None:
            return 0.0
        parallel = min(self.decode_workers, self.gate.limit)
        return (self.undecoded + n) / (per_thread * parallel)

    def refuse_when_full(self) -> None:
        """CapacityError `overloaded` when even one more image would be refused: asked
        before a request's body is read (contrastkit.service.api.shedding), so that overload is shed
        without reading, let alone decoding, an upload."""
        with capacity_errors():
            self.batcher.check(1, before=self.decode_wait(1))

    async def __call__(
        self, images: Sequence[ImageSource], indices: Sequence[int] | None = None
    ) -> torch.Tensor:
        """n images -> [n, d]. `indices`: each image's number in the request, for the
        errors that name one (default 0..n-1)."""
        numbers = list(indices) if indices is not None else list(range(len(images)))
        n = len(images)
        with capacity_errors():
            reservation = self.batcher.reserve(n, before=self.decode_wait(n))
            self.undecoded += n
            # given back once its images are decoded (or will never be: an error, a client
            # that left); idempotent, like the batcher's reservation
            undecoded = Reservation(n, self._decoded)
            try:
                return await while_client_waits(
                    self._embed(images, numbers, reservation, undecoded)
                )
            finally:
                undecoded.release()
                reservation.release()  # at once when decoding failed or the client left

    def _decoded(self, n: int, _ended: bool) -> None:
        self.undecoded -= n

    async def _embed(
        self,
        images: Sequence[ImageSource],
        numbers: list[int],
        reservation: Reservation,
        undecoded: Reservation,
    ) -> torch.Tensor:
        try:
            pixels = await self._decode(images, numbers)
        finally:
            undecoded.release()
        out = await self.batcher.submit(pixels, reservation)
        if self.device_decode:  # a NaN row: a file neither the device nor PIL could decode
            bad = torch.isnan(out).any(dim=1).nonzero()
            if len(bad):
                raise ImageError(
                    "image_decode_failed",
                    f"image {numbers[int(bad[0])]} could not be decoded (truncated or corrupt?)",
                )
        return out

    async def _decode(
        self, images: Sequence[ImageSource], numbers: list[int]
    ) -> list[torch.Tensor]:
        """n images -> n preprocessed [3, s, s] tensors; the first bad image (in request
        order) raises its error once every decode has ended."""
        loop = asyncio.get_running_loop()
        async with self.gate.enter(len(images)):
            done = await asyncio.gather(
                *(
                    loop.run_in_executor(self.decode_pool, self._timed_prepare, image, i)
                    for image, i in zip(images, numbers, strict=True)
                ),
                return_exceptions=True,  # keep the places held until every decode ended
            )
        pixels: list[torch.Tensor] = []
        seconds = 0.0
        for result in done:
            if isinstance(result, BaseException):
                raise result
            pixels.append(result[0])
            seconds += result[1]
        self.decode_rate.add(len(pixels), seconds)
        return pixels

    def _timed_prepare(self, source: ImageSource, index: int) -> tuple[torch.Tensor, float]:
        """_prepare, and the seconds it took this decode thread (the decode rate)."""
        start = time.perf_counter()
        out = self._prepare(source, index)
        return out, time.perf_counter() - start

    def _prepare(self, source: ImageSource, index: int) -> torch.Tensor:
        """One image -> uint8 [3, S, S] prepared here, or uint8 [nbytes] (the file itself)
        when the device decodes it. Runs in the decode pool: base64 too is decoded here."""
        blob = source if isinstance(source, bytes) else decode_base64_image(source, index)
        if self.device_decode and wants_device(blob, self.max_pixels, index):
            return as_jpeg_item(blob)
        size = self.encoder.info.preprocess.size
        image = decode_image(blob, self.max_pixels, draft_size=size, index=index)
        return self.encoder.preprocess_image(image)


@contextlib.contextmanager
def capacity_errors() -> Iterator[None]:
    """The two transient failures of embedding as CapacityError."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        # The batch, not the request, was too big for the device right now: retryable.
        raise CapacityError(
            "out_of_memory",
            "the device ran out of memory; retry, or send fewer items",
            retry_after=1,
        ) from e
    except QueueFullError as e:
        raise CapacityError(
            "overloaded",
            f"the server is at capacity ({e}); retry shortly",
            retry_after=e.retry_after,
        ) from e
