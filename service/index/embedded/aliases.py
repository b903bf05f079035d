"""The embedded store's aliases (contrastkit.service.index.aliases): one small JSON file in the
collections folder, `.aliases.json`, {"version": 1, "aliases": {alias: collection}}.

Written whole on every change, atomically (a temp file fsynced, renamed over the old one,
the folder fsynced: fsutil.atomic_write), so after a crash it holds the aliases before
the change or after it, never a mix; read once when the store opens. A folder without
the file (every one made before aliases) has no aliases. Its name starts with a dot, as
no collection's can (check_name), so it never takes a collection's name, nor is it
ever loaded as one (the store skips such names)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from contrastkit.service.index.fsutil import atomic_write
from contrastkit.service.index.types import CollectionError

FILE = ".aliases.json"
VERSION = 1


class AliasFile:
    """The aliases of one collections folder, in memory and on disk.

    `current` is replaced, never changed in place: a reader holding the old dict keeps
    a consistent view (the switch is one reference assignment), and takes no lock."""

    def __init__(self, root: Path) -> None:
        self.path = root / FILE
        self.lock = threading.Lock()  # held by whoever changes the aliases or checks them
        self.current: dict[str, str] = read_aliases(self.path)

    def replace(self, aliases: dict[str, str]) -> None:
        """Make `aliases` the aliases: durable first, then served. Call with `lock` held."""
        body = {"version": VERSION, "aliases": dict(sorted(aliases.items()))}
        atomic_write(self.path, json.dumps(body, indent=1).encode())
        self.current = dict(aliases)


def read_aliases(path: Path) -> dict[str, str]:
    """The aliases stored in `path` ({} without the file); "collection_corrupt" naming
    the file when it is not one this version wrote (it is never overwritten then)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise CollectionError("storage_error", f"{path} cannot be read ({e})") from e
    try:
        body = json.loads(raw)
        version, aliases = body["version"], body["aliases"]
        if version != VERSION or not isinstance(aliases, dict):
            raise ValueError(f"version {version!r}, aliases of type {type(aliases).__name__}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
            raise ValueError("an alias or a collection name that is not a string")
    except (ValueError, KeyError, TypeError) as e:
        raise CollectionError(
            "collection_corrupt",
            f"{path} is not an aliases file of this version ({e}): restore it from a "
            "backup, or remove it (the aliases are then gone; the collections stay)",
        ) from e
    return dict(aliases)
