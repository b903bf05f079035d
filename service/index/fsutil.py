"""Durable file operations: fsync the file, rename atomically, fsync the folder."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contrastkit.service.index.types import CollectionError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` (replacing it) and fsync it; on failure `path` is removed.

    Raises CollectionError (storage_error, or insufficient_storage on a full disk)."""
    write_parts(path, [data])


def write_parts(path: Path, parts: Iterable[Any]) -> int:
    """write_file for content made in parts (each a bytes-like object: bytes, memoryview,
    a contiguous numpy array), written as they come -> bytes written."""
    size = 0
    try:
        with open(path, "wb") as f:
            for part in parts:
                size += f.write(part)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        path.unlink(missing_ok=True)
        raise storage_error(e) from e
    return size


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, rename over `path`, fsync the dir.

    After a crash `path` holds either the old or the new content, never a mix.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    write_file(tmp, data)
    try:
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise storage_error(e) from e


def utc_stamp() -> str:
    """The time now, for file names: e.g. "20250131T235959Z"."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def unused_path(folder: Path, stem: str, suffix: str = "") -> Path:
    """`folder/stem-<utc stamp><suffix>`, with "-2", "-3", ... added if that name is taken."""
    base = f"{stem}-{utc_stamp()}"
    path, n = folder / f"{base}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{base}-{n}{suffix}"
    return path


def is_disk_full(e: CollectionError) -> bool:
    return e.code == "insufficient_storage"


def storage_error(e: OSError) -> CollectionError:
    if e.errno in DISK_FULL:
        return CollectionError("insufficient_storage", "the disk is full; nothing was written")
    return CollectionError("storage_error", f"could not write to disk: {e.strerror or e}")
