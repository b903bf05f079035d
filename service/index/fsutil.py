"""Durable file operations: fsync the file, rename atomically, fsync the folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from service.index.types import CollectionError


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, rename over `path`, fsync the dir.

    After a crash `path` holds either the old or the new content, never a mix.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise storage_error(e) from e


def storage_error(e: OSError) -> CollectionError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CollectionError("insufficient_storage", "the disk is full; nothing was written")
    return CollectionError("storage_error", f"could not write to disk: {e.strerror or e}")
