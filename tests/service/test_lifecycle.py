"""The pieces of a model change below the API: a retired batcher stops once idle and
still serves a late job; the set of served models changes as a value and remembers
what left it."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from contrastkit.service.domain_errors import ModelError
from contrastkit.service.runtime.batcher import Batcher
from contrastkit.service.runtime.served import ServedModel, ServedModels
from tests.helpers import wait_until_async


def _rows(items: list[int]) -> torch.Tensor:
    return torch.tensor(items, dtype=torch.float32)[:, None]


def test_a_retired_batcher_finishes_its_queue_then_stops_and_serves_a_late_job() -> None:
    pool = ThreadPoolExecutor(1)

    async def main() -> None:
        b: Batcher[int] = Batcher(_rows, pool, max_batch=2, max_wait_ms=0, max_queue=100)
        b.start()
        queued = [asyncio.ensure_future(b.submit([i, i + 1, i + 2])) for i in (0, 10)]
        await asyncio.sleep(0)  # both jobs queued
        b.retire()
        out = await asyncio.gather(*queued)  # served in chunks of 2, all of them
        assert [o[:, 0].tolist() for o in out] == [[0, 1, 2], [10, 11, 12]]
        await wait_until_async(lambda: not b.running, what="the retired loop's end")
        assert not b.running  # idle and retired: the loop has ended
        # a request that resolved the model before it was retired submits only now
        late = await asyncio.wait_for(b.submit([7]), 60)
        assert late.tolist() == [[7.0]]
        await wait_until_async(lambda: not b.running, what="the late job's loop's end")
        assert not b.running and b.pending == 0
        await b.stop()  # stopping a stopped batcher is harmless

    try:
        asyncio.run(main())
    finally:
        pool.shutdown(wait=False)


def _set(*refs: str) -> tuple[ServedModels, list[ServedModel]]:
    models = [ServedModel(ref) for ref in refs]
    return ServedModels(tuple(models)), models


def test_changes_return_a_new_set_and_leave_the_old_one_alone() -> None:
    before, (_, b) = _set("a", "b")
    c = ServedModel("c", alias="see")
    after = before.added(c)
    assert before.names() == ["a", "b"] and after.names() == ["a", "b", "c"]
    assert after.added(ServedModel("d"), default=True).default.ref == "d"
    assert after.with_default(b).names() == ["b", "a", "c"]
    assert after.named("see") is c  # an alias names the model too


def test_what_left_the_set_is_remembered_until_it_comes_back() -> None:
    models, (a, b) = _set("a", "b")
    b.alias = "bee"
    models = models.without(b)
    for name in ("b", "bee"):
        assert models.gone(name) == "model 'b' was unloaded from this server"
        with pytest.raises(ModelError, match="'b' was unloaded from this server; this server"):
            models.named(name)
    assert models.gone("a") is None and models.gone("never") is None
    # a replacement takes over the names it shares (the alias), not the others
    new = ServedModel("a2", alias="first")
    a.alias = "first"
    models = models.replaced(a, new)
    assert models.names() == ["a2"]
    assert models.gone("a") == "model 'a' was replaced by 'a2'"
    assert models.gone("first") is None and models.named("first") is new
    # loaded again, a name is served, no longer gone
    models = models.added(ServedModel("b"))
    assert models.gone("b") is None and models.gone("bee") is not None
