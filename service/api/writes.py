"""Item writes through the gate (contrastkit.service.index.gate), so that a migration's switch never
misses one.

A request is served by the collection its `{name}` named when it started (an alias is
resolved once). A write through an alias that a migration switched while the request
was being read is refused (`alias_switched`, 409, nothing written): landing in the old
collection after the migration's last pass, it would be missing from the new one. Sent
again, it reaches the collection the alias names now.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from contrastkit.service.domain_errors import CapacityError
from contrastkit.service.index.types import CollectionError

if TYPE_CHECKING:
    from contrastkit.service.api.deps import IndexRunner
    from contrastkit.service.index.backend import CollectionBackend, CollectionHandle
    from contrastkit.service.index.gate import WriteGate

T = TypeVar("T")
WAIT_S = 0.01  # how often a write held at the gate looks again
MAX_HELD_S = 30.0  # then it is shed (503): a last pass is seconds, not minutes


class GatedWrite:
    """Writes to `col`, reached by the path's `name` (a collection or an alias)."""

    def __init__(
        self,
        gate: WriteGate,
        store: CollectionBackend,
        name: str,
        col: CollectionHandle,
        run: IndexRunner,
    ) -> None:
        self.gate, self.store, self.name, self.col, self.run = gate, store, name, col, run

    async def __call__(self, write: Callable[..., T], *args: object) -> T:
        """`write(*args)` in the index pool, inside the gate."""
        deadline = time.monotonic() + MAX_HELD_S
        while not self.gate.try_enter(self.col.name):  # held for a migration's switch
            if time.monotonic() > deadline:
                raise CapacityError(
                    "overloaded",
                    f"collection {self.col.name!r} is held for a migration's switch; nothing "
                    "was written: retry shortly",
                )
            await asyncio.sleep(WAIT_S)
        try:
            if self.name != self.col.name:  # through an alias: is it still the same?
                self._check(await self.run(self.store.aliases))
            return await self.run(write, *args)
        finally:
            self.gate.leave(self.col.name)

    def _check(self, aliases: dict[str, str]) -> None:
        now = aliases.get(self.name)
        if now != self.col.name:
            moved = f"switched to {now!r}" if now else "removed"
            raise CollectionError(
                "alias_switched",
                f"alias {self.name!r} was {moved} (it named {self.col.name!r}) while this "
                "request was read; nothing was written: send it again",
            )
