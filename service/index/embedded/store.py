"""All collections under one folder: create, open (recovering each), list, delete."""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from pathlib import Path

from contrastkit.service.domain_errors import ErrorCode
from contrastkit.service.index.embedded.collection import Collection
from contrastkit.service.index.embedded.folder_lock import StoreLockedError as StoreLockedError
from contrastkit.service.index.embedded.folder_lock import lock_folder
from contrastkit.service.index.embedded.recovery import holds_collection
from contrastkit.service.index.embedded.staging import remove_remnants
from contrastkit.service.index.fsutil import fsync_dir, storage_error
from contrastkit.service.index.types import (
    CollectionError,
    CollectionInfo,
    IndexSpec,
    check_name,
    check_new,
)

log = logging.getLogger("contrastive.index")


class CollectionStore:
    """Collections in `root/<name>/`. A collection that cannot be recovered is kept out of
    service and listed in `problems` (the service's /readyz reports them); so is one whose
    snapshot files change under the running server (Collection._check_files), once seen.

    A folder is a collection when it holds its collection.json or any of its data files
    (recovery.holds_collection): one whose collection.json was lost is refused and listed,
    not ignored, so its name is not silently free while its data sits there. Folders whose
    names no collection can have (".deleted-..." left by an interrupted delete) are skipped."""

    def __init__(self, root: Path, snapshot_every: int = 20_000, device: str | None = None) -> None:
        self.root = root
        self.device = device
        self.snapshot_every = snapshot_every
        self.root.mkdir(parents=True, exist_ok=True)
        self._owner = lock_folder(root)
        self._lock = threading.Lock()
        self._open: dict[str, Collection] = {}
        self._problems: dict[str, str] = {}  # name -> why it is refused (for /readyz)
        self._problem_codes: dict[str, ErrorCode] = {}  # name -> the error code get() answers
        remove_remnants(root)  # lock held: no import is filling one now
        for folder in sorted(root.iterdir()):
            if _is_collection(folder):
                self._load(folder)

    def _load(self, folder: Path) -> None:
        try:
            col = Collection(folder, self.snapshot_every, self.device)
        except CollectionError as e:
            self._problems[folder.name] = e.message
            # a disk error is no corruption: said as it is (503 storage_error)
            corrupt = e.code == "collection_corrupt"
            self._problem_codes[folder.name] = "collection_corrupt" if corrupt else "storage_error"
            log.error("%s", e.message)
            return
        except Exception as e:  # an unreadable folder must not take the others down
            self._problems[folder.name] = f"{type(e).__name__}: {e}"
            log.exception("collection %s could not be opened", folder.name)
            return
        self._open[col.name] = col
        if col.status != "ok":  # "rebuilt_from_log", or "disk_full" (read-only)
            log.warning("collection %s: %s", col.name, col.status)

    def create(
        self, name: str, model_id: str, dim: int, spec: IndexSpec | None = None
    ) -> CollectionInfo:
        spec = check_new(name, dim, spec)
        with self._lock:
            self._check_free(name)
            Collection.create(self.root / name, name, model_id, dim, spec)
            col = Collection(self.root / name, self.snapshot_every, self.device)
            self._open[name] = col
            return col.info()

    def _check_free(self, name: str) -> None:
        """collection_exists (409) unless `name` is free, saying what holds it: a refused
        collection's files are never overwritten by a new one of the same name."""
        if name in self._open:
            raise CollectionError("collection_exists", f"collection {name!r} already exists")
        if name in self._problems:
            raise CollectionError(
                "collection_exists",
                f"collection {name!r} already exists: its folder holds a refused collection, "
                f"kept as it is; repair it, or delete it first. {self._problems[name]}",
            )
        if (self.root / name).exists():
            raise CollectionError(
                "collection_exists",
                f"collection {name!r} cannot be created: a folder of that name, holding no "
                "collection, is in the collections folder; remove it first",
            )

    def publish(self, staged: Path, name: str) -> CollectionInfo:
        """Give a filled, closed staging folder (staging.py) its name and serve it: one
        rename, so `name` appears whole or not at all ("collection_exists" if taken)."""
        with self._lock:
            self._check_free(name)
            try:
                staged.rename(self.root / name)
                fsync_dir(self.root)
            except OSError as e:
                raise storage_error(e) from e
            self._load(self.root / name)
        return self.get(name).info()

    def get(self, name: str) -> Collection:
        check_name(name)
        col = self._open.get(name)
        if col is not None and col.refused is not None:  # its files changed under it
            self._retire(col)
            col = None
        if col is None:
            if name in self._problems:
                code = self._problem_codes.get(name, "collection_corrupt")
                raise CollectionError(code, self._problems[name])
            raise CollectionError("collection_not_found", f"no collection named {name!r}")
        return col

    def list(self) -> list[CollectionInfo]:
        self._sweep()
        return [c.info() for c in sorted(self._open.values(), key=lambda c: c.name)]

    @property
    def problems(self) -> dict[str, str]:
        """name -> why it is refused: at open, or since (its files changed under it)."""
        self._sweep()
        return self._problems

    def _sweep(self) -> None:
        """Retire the open collections whose files changed under the server (a stat or two
        each; one busy with a long call is left to that call's own check)."""
        for col in list(self._open.values()):
            if col.check_files(wait=False) is not None:
                self._retire(col)

    def _retire(self, col: Collection) -> None:
        """Move a collection refused while open to `problems`: out of service, files kept."""
        assert col.refused is not None
        with self._lock:
            if self._open.get(col.name) is not col:
                return
            del self._open[col.name]
            self._problems[col.name] = col.refused
            self._problem_codes[col.name] = "collection_corrupt"
        col.close()

    def delete(self, name: str) -> None:
        check_name(name)
        with self._lock:
            col = self._open.pop(name, None)
            if col is None and name not in self._problems:
                raise CollectionError("collection_not_found", f"no collection named {name!r}")
            self._problems.pop(name, None)
            self._problem_codes.pop(name, None)
            if col is not None:
                col.close()
            # rename first: after a crash the collection is gone, never half-deleted
            trash = self.root / f".deleted-{name}-{uuid.uuid4().hex[:8]}"
            (self.root / name).rename(trash)
            shutil.rmtree(trash, ignore_errors=True)

    def snapshot_all(self) -> None:
        for col in list(self._open.values()):
            col.snapshot()

    def close(self, snapshot: bool = False) -> None:
        """Close every collection; with `snapshot`, first write a snapshot of each whose log
        holds records (a shutdown: the next start then replays nothing)."""
        with self._lock:  # no create or delete runs meanwhile
            cols = list(self._open.values())
            self._open.clear()
        for col in cols:
            if snapshot and col.log_records:
                try:
                    col.snapshot()
                except Exception:  # the fsynced log still holds every write
                    log.exception("collection %s: snapshot at shutdown failed", col.name)
            col.close()
        self._owner.close()  # releases the folder's lock


def _is_collection(folder: Path) -> bool:
    """A folder named as a collection can be, holding one (recovery.holds_collection)."""
    try:
        check_name(folder.name)
    except CollectionError:  # e.g. ".deleted-<name>-<hex>": a delete cut short
        return False
    return folder.is_dir() and holds_collection(folder)
