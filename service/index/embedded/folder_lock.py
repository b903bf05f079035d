"""The collections folder's lock: one process per folder.

Kept apart from the store (which imports FAISS and torch) so `contrastive serve` can probe
the lock before it loads anything, and say in one line that another server holds it.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import TextIO


class StoreLockedError(OSError):
    """Another process has the collections folder open."""


def lock_folder(root: Path) -> TextIO:
    """Hold an exclusive lock on `root/.lock` while the store is open: one process per
    folder, since a second writer would interleave the logs. The kernel drops the lock
    when the process dies, kill -9 included, so a crash never leaves the folder locked."""
    handle = (root / ".lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreLockedError(
            f"the collections folder {root} is open in another process (a running "
            "server? talk to it over HTTP instead, e.g. `contrastive index ... --url`)"
        ) from None
    return handle
