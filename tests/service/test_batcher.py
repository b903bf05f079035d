"""The batcher's admission (by estimated wait and by items), its round-robin chunks, the
dropping of jobs whose client left, and the image embedder's admission before decoding
and its bounded decode queue."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from contrastkit.service.domain_errors import CapacityError
from contrastkit.service.runtime import disconnect
from contrastkit.service.runtime.batcher import Batcher, QueueFullError, ServiceRate
from contrastkit.service.runtime.disconnect import ClientGoneError, while_client_waits
from contrastkit.service.runtime.embedding import ImageEmbedder
from contrastkit.service.runtime.images import ImageError
from tests.helpers import FakeEncoder, image_bytes, item_rows
from tests.helpers import wait_until_async as until


class Model:
    """fn for a Batcher: records every batch, sleeps `per_item` s per item, and can be
    held at its next call until `release()` (for tests that act while it runs)."""

    def __init__(self, per_item: float = 0.0) -> None:
        self.per_item = per_item
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self._go = threading.Event()
        self._go.set()

    def hold(self) -> None:
        self._go.clear()
        self.started.clear()

    def release(self) -> None:
        self._go.set()

    def __call__(self, items: list[int]) -> torch.Tensor:
        self.batches.append(list(items))
        self.started.set()
        self._go.wait(60)
        time.sleep(self.per_item * len(items))
        return item_rows(items)


def test_service_rate_weights_batches_by_their_size() -> None:
    rate = ServiceRate(decay=0.5)
    assert rate.per_second is None
    rate.add(64, 1.0)
    assert rate.per_second == pytest.approx(64.0)
    rate.add(1, 1.0)  # a lone small batch moves the estimate, but only part of the way
    assert rate.per_second == pytest.approx((32 + 1) / (0.5 + 1.0))


def test_admission_by_estimated_wait_and_by_items(pool: ThreadPoolExecutor) -> None:
    async def main() -> None:
        b: Batcher[int] = Batcher(Model(), pool, 64, 0, max_queue=100, max_queue_wait_ms=500)
        # before any batch is measured, only the item limit applies
        assert b.estimated_wait(1) is None
        first = b.reserve(90)
        with pytest.raises(QueueFullError, match="90 items queued, the limit is 100"):
            b.reserve(11)
        first.release()
        assert b.pending == 0

        b.rate.add(100, 1.0)  # as if measured: 100 items/s
        held = b.reserve(30)
        b.reserve(20)  # 50 items: 0.5 s, just at the limit
        with pytest.raises(QueueFullError, match=r"wait about 0\.5 s, the limit is 0\.5 s") as e:
            b.reserve(1)
        assert e.value.retry_after == 1
        assert (b.pending, b.jobs) == (50, 2)  # a refusal takes nothing
        held.release()
        assert (b.pending, b.jobs) == (20, 1)
        b.reserve(1).release()  # room again
        # an empty batcher takes any job, even one longer than the limit alone
        b.pending = b.jobs = 0
        b.reserve(99).release()
        assert (b.pending, b.jobs) == (0, 0)

    asyncio.run(main())


def test_a_closed_loop_population_is_admitted_past_the_wait_limit(
    pool: ThreadPoolExecutor,
) -> None:
    """Up to `always_admit` jobs are admitted whatever their wait; past that, the wait
    limit sheds as before, and the item limit always applies."""

    async def main() -> None:
        b: Batcher[int] = Batcher(
            Model(), pool, 64, 0, max_queue=100, max_queue_wait_ms=500, always_admit=3
        )
        b.rate.add(10, 1.0)  # 10 items/s: each job of 10 items is a second of work
        held = [b.reserve(10) for _ in range(3)]  # 3 s of work queued, 6x the limit
        assert (b.pending, b.jobs) == (30, 3)
        with pytest.raises(QueueFullError, match=r"wait about 4\.0 s, the limit is 0\.5 s"):
            b.reserve(10)  # the fourth job: the wait limit applies again
        held.pop().release()  # one client got its answer ...
        held.append(b.reserve(10))  # ... and its next request is admitted at once
        with pytest.raises(QueueFullError, match="30 items queued, the limit is 100"):
            b.reserve(71)  # never past max_queue, however few jobs
        for r in held:
            r.release()
        assert (b.pending, b.jobs) == (0, 0)

    asyncio.run(main())


def test_retry_after_says_when_the_job_would_fit(pool: ThreadPoolExecutor) -> None:
    async def main() -> None:
        b: Batcher[int] = Batcher(Model(), pool, 64, 0, max_queue=40, max_queue_wait_ms=500)
        b.rate.add(10, 1.0)  # 10 items/s
        b.reserve(5)
        with pytest.raises(QueueFullError) as e:
            b.reserve(30)  # (5 + 30) / 10 = 3.5 s: 3 s past the limit
        assert e.value.retry_after == 3
        b.rate.add(10_000, 1.0)  # now fast: the item limit refuses, 5 items over it
        with pytest.raises(QueueFullError, match="5 items queued, the limit is 40") as e:
            b.reserve(40)
        assert e.value.retry_after == 1

    asyncio.run(main())


def test_a_small_job_is_admitted_beside_a_big_one(pool: ThreadPoolExecutor) -> None:
    """Jobs take turns: a small job waits for one chunk of a big job, not all of it."""

    async def main() -> None:
        b: Batcher[int] = Batcher(Model(), pool, 4, 0, max_queue=1000, max_queue_wait_ms=500)
        b.rate.add(100, 1.0)  # 100 items/s: the big job alone is 2 s of work
        big = b.reserve(200)
        assert b.estimated_wait(1) == pytest.approx((4 + 1) / 100)
        b.reserve(1)
        with pytest.raises(QueueFullError):  # 40 items: 10 turns, 4 items of each job a turn
            b.reserve(40)
        assert b.estimated_wait(40) == pytest.approx((min(201, 2 * 40) + 40) / 100)
        big.release()
        b.reserve(40)

    asyncio.run(main())


def test_a_slow_model_is_refused_by_time_long_before_the_item_limit(
    pool: ThreadPoolExecutor,
) -> None:
    """10 ms per item: 100 items/s at most (a busy machine only makes it slower). With a
    100 ms limit, a batch of 8 items in the queue leaves no room for 3 more, though the
    item limit (1000) is far away."""
    model = Model(per_item=0.01)

    async def main() -> None:
        b: Batcher[int] = Batcher(model, pool, 8, 0, max_queue=1000, max_queue_wait_ms=100)
        b.start()
        await b.submit([0, 1, 2, 3])  # measures the rate
        rate = b.rate.per_second
        assert rate is not None and rate <= 100
        model.hold()  # the next batch runs until released
        busy = asyncio.create_task(b.submit(list(range(8))))
        await until(lambda: model.started.is_set() and b.pending == 8)
        with pytest.raises(QueueFullError, match="it would wait about"):
            await b.submit([8, 9, 10])
        # refused at once, not after waiting: the batch ahead of it is still running
        assert not busy.done() and b.pending == 8
        model.release()
        assert (await busy)[:, 0].tolist() == list(range(8))
        assert b.pending == 0
        await b.stop()

    asyncio.run(main())


def test_two_jobs_take_turns_in_chunks_of_max_batch(pool: ThreadPoolExecutor) -> None:
    model = Model()

    async def main() -> None:
        b: Batcher[int] = Batcher(model, pool, 4, 0, max_queue=100)
        b.start()
        big = asyncio.create_task(b.submit(list(range(12))))
        other = asyncio.create_task(b.submit(list(range(100, 108))))
        out_big, out_other = await asyncio.gather(big, other)
        assert out_big[:, 0].tolist() == list(range(12))
        assert out_other[:, 0].tolist() == list(range(100, 108))
        await b.stop()

    asyncio.run(main())
    assert model.batches == [
        [0, 1, 2, 3],
        [100, 101, 102, 103],
        [4, 5, 6, 7],
        [104, 105, 106, 107],
        [8, 9, 10, 11],
    ]


def test_a_small_job_is_not_stuck_behind_a_big_one(pool: ThreadPoolExecutor) -> None:
    model = Model()

    async def main() -> None:
        b: Batcher[int] = Batcher(model, pool, 4, 0, max_queue=100)
        b.start()
        model.hold()
        big = asyncio.create_task(b.submit(list(range(40))))
        await until(model.started.is_set)  # the big job's first chunk is running
        small = asyncio.create_task(b.submit([1000]))
        await until(lambda: b.pending == 41)  # the small job is queued
        model.release()
        assert (await small)[:, 0].tolist() == [1000]
        assert not big.done()  # 10 chunks; the small job waited for 2 of them
        await big
        await b.stop()

    asyncio.run(main())
    # it shares the third batch; all 41 items ran in full batches but the last
    assert any(1000 in batch for batch in model.batches[:3])
    assert [len(batch) for batch in model.batches] == [4] * 10 + [1]


def test_a_cancelled_job_runs_no_further_chunks(pool: ThreadPoolExecutor) -> None:
    model = Model()

    async def main() -> None:
        b: Batcher[int] = Batcher(model, pool, 4, 0, max_queue=100)
        b.start()
        model.hold()
        job = asyncio.create_task(b.submit(list(range(40))))
        await until(model.started.is_set)
        job.cancel()  # the client left while its first chunk runs
        with pytest.raises(asyncio.CancelledError):
            await job
        assert b.pending == 0  # its room is given back at once
        model.release()
        out = await b.submit([7, 8])
        assert out[:, 0].tolist() == [7, 8]
        await b.stop()

    asyncio.run(main())
    assert model.batches == [[0, 1, 2, 3], [7, 8]]  # 9 chunks of the cancelled job dropped


def test_work_stops_when_its_client_leaves(pool: ThreadPoolExecutor) -> None:
    model = Model()

    async def request(b: Batcher[int], items: list[int], left: asyncio.Event) -> torch.Tensor:
        disconnect.watch(
            left.wait
        )  # what contrastkit.service.api.deps.watch_disconnect does for a request
        return await while_client_waits(b.submit(items))

    async def main() -> None:
        b: Batcher[int] = Batcher(model, pool, 4, 0, max_queue=100)
        b.start()
        stays = asyncio.Event()
        assert (await request(b, [1, 2], stays))[:, 0].tolist() == [1, 2]
        model.hold()
        leaves = asyncio.Event()
        task = asyncio.create_task(request(b, list(range(40)), leaves))
        await until(model.started.is_set)
        leaves.set()
        with pytest.raises(ClientGoneError) as e:
            await task
        assert e.value.code == "client_closed_request"
        assert b.pending == 0
        model.release()
        assert (await b.submit([5]))[:, 0].tolist() == [5]
        await b.stop()

    asyncio.run(main())
    assert model.batches == [[1, 2], [0, 1, 2, 3], [5]]


def test_a_failed_batch_fails_its_jobs_and_frees_their_room(pool: ThreadPoolExecutor) -> None:
    def broken(items: list[int]) -> torch.Tensor:
        raise RuntimeError("device lost")

    async def main() -> None:
        b: Batcher[int] = Batcher(broken, pool, 4, 0, max_queue=100)
        b.start()
        with pytest.raises(RuntimeError, match="device lost"):
            await b.submit(list(range(10)))
        assert b.pending == 0
        await b.stop()

    asyncio.run(main())


# -- the image embedder: admission before decoding, bounded decode queue -------------------
class CountingEmbedder(ImageEmbedder):
    """Counts decodes; `hold`, when set, holds every decode until it is opened."""

    def __init__(self, batcher: Batcher[torch.Tensor], decode_pool: ThreadPoolExecutor, **kw: int):
        super().__init__(FakeEncoder(), batcher, decode_pool, 10_000, **kw)
        self.decodes = 0
        self.hold: threading.Event | None = None

    def _prepare(self, blob: bytes, index: int) -> torch.Tensor:
        self.decodes += 1
        if self.hold is not None:
            self.hold.wait(60)
        return super()._prepare(blob, index)


def _image_batcher(pool: ThreadPoolExecutor, max_queue: int) -> Batcher[torch.Tensor]:
    enc = FakeEncoder()

    def embed(pixels: list[torch.Tensor]) -> torch.Tensor:
        return enc.encode_image_tensors(torch.stack(pixels))

    return Batcher(embed, pool, 8, 0, max_queue=max_queue)


PNG = image_bytes(np.full((8, 8, 3), 200, np.uint8))


def test_images_are_refused_before_any_is_decoded(pool: ThreadPoolExecutor) -> None:
    async def main() -> None:
        with ThreadPoolExecutor(2) as decode_pool:
            batcher = _image_batcher(pool, max_queue=4)
            batcher.start()
            embed = CountingEmbedder(batcher, decode_pool)
            held = batcher.reserve(4)  # the queue is full
            with pytest.raises(CapacityError) as e:
                await embed([PNG, PNG])
            assert e.value.code == "overloaded" and e.value.retry_after == 1
            assert embed.decodes == 0 and batcher.pending == 4
            held.release()
            assert (await embed([PNG, PNG])).shape == (2, 8)
            await batcher.stop()

    asyncio.run(main())


def test_a_bad_image_gives_back_the_reservation(pool: ThreadPoolExecutor) -> None:
    async def main() -> None:
        with ThreadPoolExecutor(2) as decode_pool:
            batcher = _image_batcher(pool, max_queue=4)
            batcher.start()
            embed = CountingEmbedder(batcher, decode_pool)
            with pytest.raises(ImageError, match="image 1 is not a readable image"):
                await embed([PNG, b"not an image", PNG, PNG])
            assert embed.decodes == 4  # every decode ended before the room was freed
            assert batcher.pending == 0 and embed.gate.in_use == 0
            assert (await embed([PNG] * 4)).shape == (4, 8)  # the whole queue is free
            await batcher.stop()

    asyncio.run(main())


def test_the_decode_queue_is_bounded(pool: ThreadPoolExecutor) -> None:
    """Past `max_decoding` images, an admitted request waits for its turn to decode (in
    arrival order) rather than being refused; a request that leaves while waiting gives
    its turn to the next."""

    async def main() -> None:
        with ThreadPoolExecutor(2) as decode_pool:
            batcher = _image_batcher(pool, max_queue=100)
            batcher.start()
            embed = CountingEmbedder(batcher, decode_pool, max_decoding=3)
            embed.hold = threading.Event()  # decodes hang until opened
            first = asyncio.create_task(embed([PNG, PNG, PNG]))
            await until(lambda: embed.decodes == 2)  # 2 decode threads busy, 1 queued
            leaver = asyncio.create_task(embed([PNG, PNG]))
            second = asyncio.create_task(embed([PNG]))
            # both reach the gate (its queue, a private attribute, read only to know when)
            await until(lambda: len(embed.gate._waiting) == 2)
            assert embed.gate.in_use == 3 and embed.decodes == 2  # both wait at the gate
            assert batcher.pending == 6  # admitted: their room in the batcher is held
            leaver.cancel()
            embed.hold.set()
            assert (await first).shape == (3, 8)
            assert (await second).shape == (1, 8)
            with pytest.raises(asyncio.CancelledError):
                await leaver
            assert embed.decodes == 4  # the leaver's images were never decoded
            assert embed.gate.in_use == 0 and batcher.pending == 0
            await batcher.stop()

    asyncio.run(main())


# -- admission counts the decoding of images ------------------------------------------------
def test_a_job_whose_items_are_not_ready_waits_for_them_then_its_chunk(
    pool: ThreadPoolExecutor,
) -> None:
    """`before` (seconds until the job's items are decoded) delays its last chunk: the
    estimate is the later of the model's queue and that plus the chunk's own time."""

    async def main() -> None:
        b: Batcher[int] = Batcher(Model(), pool, 16, 0, max_queue=100, max_queue_wait_ms=500)
        b.rate.add(100, 1.0)  # 100 items/s
        b.reserve(10)
        assert b.estimated_wait(2) == pytest.approx((10 + 2) / 100)  # the model's queue
        assert b.estimated_wait(2, before=0.05) == pytest.approx((10 + 2) / 100)  # ready first
        assert b.estimated_wait(2, before=1.0) == pytest.approx(1.0 + 2 / 100)
        assert b.estimated_wait(40, before=1.0) == pytest.approx(1.0 + 16 / 100)  # a chunk
        b.check(2)  # 0.12 s: admitted ...
        with pytest.raises(QueueFullError, match=r"wait about 1\.0 s, the limit is 0\.5 s"):
            b.check(2, before=1.0)  # ... unless its images take a second to be decoded
        with pytest.raises(QueueFullError):
            b.reserve(2, before=1.0)
        assert (b.pending, b.jobs) == (10, 1)  # neither check nor a refusal takes room

    asyncio.run(main())


def test_the_decode_wait_counts_every_image_admitted_and_not_yet_decoded(
    pool: ThreadPoolExecutor,
) -> None:
    async def main() -> None:
        with ThreadPoolExecutor(2) as decode_pool:
            embed = CountingEmbedder(_image_batcher(pool, 100), decode_pool, decode_workers=4)
            assert embed.decode_wait(5) == 0.0  # nothing measured yet: no estimate
            embed.decode_rate.add(10, 1.0)  # 10 images/s on one thread: 40/s on 4
            embed.undecoded = 35
            assert embed.decode_wait(5) == pytest.approx((35 + 5) / 40)
            embed.gate.limit = 2  # no more images decode at once than the gate lets in
            assert embed.decode_wait(5) == pytest.approx((35 + 5) / 20)

    asyncio.run(main())


def test_images_are_refused_when_their_decoding_would_take_too_long(
    pool: ThreadPoolExecutor,
) -> None:
    """A fast model with a short queue, behind a slow decode stage: the request is refused
    at admission (nothing decoded), because its images would be decoded too late."""

    async def main() -> None:
        with ThreadPoolExecutor(2) as decode_pool:
            batcher = Batcher(
                lambda px: FakeEncoder().encode_image_tensors(torch.stack(px)),
                pool,
                8,
                0,
                max_queue=1000,
                max_queue_wait_ms=1000,
            )
            batcher.start()
            embed = CountingEmbedder(batcher, decode_pool, decode_workers=2)
            batcher.rate.add(1000, 1.0)  # the model: 1,000 images/s
            embed.decode_rate.add(1, 1.0)  # decoding: 1 image/s a thread, 2/s in all
            held = batcher.reserve(3)  # 3 images admitted, still to be decoded
            embed.undecoded = 3
            with pytest.raises(CapacityError) as e:  # (3 + 2) / 2 = 2.5 s > 1 s
                await embed([PNG, PNG])
            assert e.value.code == "overloaded" and "2.5 s" in e.value.message
            assert e.value.retry_after == 2  # 1.5 s past the limit
            with pytest.raises(CapacityError):
                embed.refuse_when_full()  # one image: (3 + 1) / 2 = 2 s
            assert embed.decodes == 0 and batcher.pending == 3 and embed.undecoded == 3
            held.release()
            embed.undecoded = 0
            await batcher.stop()

    asyncio.run(main())


def test_the_undecoded_count_is_given_back_however_a_request_ends(
    pool: ThreadPoolExecutor,
) -> None:
    async def main() -> None:
        with ThreadPoolExecutor(2) as decode_pool:
            batcher = _image_batcher(pool, max_queue=100)
            batcher.start()
            embed = CountingEmbedder(batcher, decode_pool)
            assert (await embed([PNG, PNG])).shape == (2, 8)
            assert embed.undecoded == 0
            assert embed.decode_rate.per_second is not None  # the decodes were timed
            with pytest.raises(ImageError):
                await embed([PNG, b"not an image"])
            assert embed.undecoded == 0
            embed.hold = threading.Event()  # decodes hang: the client leaves meanwhile
            leaver = asyncio.create_task(embed([PNG, PNG, PNG]))
            await until(lambda: embed.undecoded == 3 and embed.decodes > 2)
            leaver.cancel()
            embed.hold.set()
            with pytest.raises(asyncio.CancelledError):
                await leaver
            assert embed.undecoded == 0 and batcher.pending == 0
            await batcher.stop()

    asyncio.run(main())
