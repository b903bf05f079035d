"""The write gate: writers share a collection, a migration's switch holds it alone, and a
write through an alias switched meanwhile is refused, not lost."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from contrastkit.service.api.writes import GatedWrite
from contrastkit.service.index.gate import WriteGate
from contrastkit.service.index.types import CollectionError
from tests.helpers import wait_until


def test_writers_share_a_collection_and_a_holder_waits_for_them() -> None:
    gate = WriteGate()
    assert gate.try_enter("a") and gate.try_enter("a")  # two writers at once
    held = threading.Event()

    def hold() -> None:
        with gate.alone("a"):
            held.set()

    holder = threading.Thread(target=hold)
    holder.start()
    # the holder is waiting (the gate's private set, read only to know when) ...
    wait_until(lambda: "a" in gate._held, what="the holder waiting")
    assert not held.is_set()  # ... while writers are inside
    assert not gate.try_enter("a")  # and no new writer gets past it meanwhile
    assert gate.try_enter("b")  # other collections are not held
    gate.leave("a")
    assert not held.wait(0.1)
    gate.leave("a")
    assert held.wait(60)
    holder.join(60)
    assert gate.try_enter("a")  # released


class _Store:
    def __init__(self, aliases: dict[str, str]) -> None:
        self._aliases = aliases

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)


class _Col:
    name = "photos"


async def _run(fn: Any, *args: Any) -> Any:
    return fn(*args)


def test_a_write_through_a_switched_alias_is_refused_and_writes_nothing() -> None:
    store, written = _Store({"live": "photos-v2"}), []
    write = GatedWrite(WriteGate(), store, "live", _Col(), _run)  # type: ignore[arg-type]
    with pytest.raises(CollectionError) as e:
        asyncio.run(write(written.append, "item"))
    assert e.value.code == "alias_switched"
    assert "photos-v2" in e.value.message and "send it again" in e.value.message
    assert written == []


def test_a_write_by_name_or_through_an_unmoved_alias_passes() -> None:
    store, written = _Store({"live": "photos"}), []
    gate = WriteGate()
    for name in ("photos", "live"):
        write = GatedWrite(gate, store, name, _Col(), _run)  # type: ignore[arg-type]
        asyncio.run(write(written.append, name))
    assert written == ["photos", "live"]
    assert gate.try_enter("photos")  # each write left the gate


def test_a_write_waits_while_the_collection_is_held() -> None:
    gate, written = WriteGate(), []
    write = GatedWrite(gate, _Store({}), "photos", _Col(), _run)  # type: ignore[arg-type]
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gate.alone("photos"):
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(60)

    async def main() -> None:
        task = asyncio.create_task(write(written.append, "x"))
        await asyncio.sleep(0.1)
        assert written == []  # held: not written yet
        release.set()
        await asyncio.wait_for(task, 60)

    asyncio.run(main())
    holder.join(60)
    assert written == ["x"]
