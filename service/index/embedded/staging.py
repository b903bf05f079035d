"""Staging folders: where a collection made all or nothing (an import, a copy) is filled
before it gets its name.

`root/.staging-NAME-<hex>/` is an ordinary collection folder (its collection.json names
NAME), filled while no one can see it, then renamed to `root/NAME` in one step
(CollectionStore.publish). The store never loads a folder whose name starts with ".", so
a staging folder is never served; the one a crash leaves is removed by the next open of
the store, which holds the folder's lock, so no import is under way in it then.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

log = logging.getLogger("contrastive.index")

PREFIX = ".staging-"


def staging_folder(root: Path, name: str) -> Path:
    """A new, unused staging folder path for collection `name` (not created)."""
    return root / f"{PREFIX}{name}-{uuid.uuid4().hex[:12]}"


def remove_remnants(root: Path) -> list[Path]:
    """Delete the staging folders under `root` (what imports cut short left) -> those
    found. Call only while holding the folder's lock."""
    found = sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir())
    for folder in found:
        log.warning("removing %s: an import or copy into it did not finish", folder)
        shutil.rmtree(folder, ignore_errors=True)
    return found
