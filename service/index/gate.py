"""A per-collection write gate: many writers at once, or one holder alone.

A migration's last pass and its alias switch hold a collection alone (`alone`): the
writes that arrive meanwhile wait (briefly: the last pass only has the few items written
since the pass before), so that none lands between the last read and the switch, where
the new collection would never see it. Every other write passes (`try_enter`, `leave`)
at the cost of an uncontended lock. Writers never block in the gate: one that finds the
collection held waits outside (a server's writes wait on its event loop, so no thread
of the index pool, which also serves searches, is tied up).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class WriteGate:
    """Shared entry for writers of a collection, exclusive entry for a migration's switch.

    A holder waiting to enter alone stops new writers at once (so that a steady stream of
    writes cannot starve it) and enters when the writers inside have left.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._writers: dict[str, int] = {}  # collection -> writers inside
        self._held: set[str] = set()  # collections held alone, or waited for

    def try_enter(self, name: str) -> bool:
        """Enter collection `name` (its real name) as a writer -> False, not entered, while
        it is held alone or waited for. Never blocks: a server's event loop calls it."""
        with self._cond:
            if name in self._held:
                return False
            self._writers[name] = self._writers.get(name, 0) + 1
            return True

    def leave(self, name: str) -> None:
        """A writer that entered `name` is done."""
        with self._cond:
            self._writers[name] -= 1
            if not self._writers[name]:
                del self._writers[name]
            self._cond.notify_all()

    @contextmanager
    def alone(self, name: str) -> Iterator[None]:
        """Hold collection `name` with no writer inside; one holder per collection."""
        with self._cond:
            self._cond.wait_for(lambda: name not in self._held)
            self._held.add(name)
            self._cond.wait_for(lambda: not self._writers.get(name))
        try:
            yield
        finally:
            with self._cond:
                self._held.discard(name)
                self._cond.notify_all()
