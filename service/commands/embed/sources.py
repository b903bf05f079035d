"""What `contrastive embed` reads: a folder of images, tar shards, or a list file.

Every input becomes a list of Items in a fixed order (sorted walk, shard then tar order,
list order), so that a restarted job meets the same items in the same order and can skip
those done. Items that cannot even be listed (an id the item rules refuse, a duplicate id,
a list row without a path) are returned as Skips, counted like unreadable images.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LIST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")
PATH_COLUMNS = ("path", "image", "filepath", "file", "source")
CAPTION_COLUMNS = ("caption", "text")


class InputError(ValueError):
    """An input that cannot be read at all (no such folder, no path column, ...)."""


@dataclass(frozen=True)
class Skip:
    """One item left out: why (a short reason, the key of the report) and an example."""

    id: str
    reason: str
    detail: str


@dataclass(frozen=True)
class Item:
    """One image to embed: a file (`path`) or a member of a tar shard (`where`)."""

    id: str
    source: str  # the file's path, or SHARD:KEY
    path: Path | None = None
    where: tuple[str, int, int] | None = None  # (shard, data offset, size)
    caption: str | None = None

    def read(self) -> bytes:
        """The image file's bytes; OSError when it is missing or unreadable."""
        if self.where is None:
            assert self.path is not None
            return self.path.read_bytes()
        shard, offset, size = self.where
        with open(shard, "rb") as f:
            f.seek(offset)
            return f.read(size)


@dataclass
class Listing:
    """The items of an input in their fixed order, and those refused while listing."""

    items: list[Item]
    skips: list[Skip]


def kind_of(spec: str) -> str:
    """'folder', 'shards' or 'list' for an INPUT (auto-detection): a .csv/.jsonl/.parquet
    file is a list; a .tar file, a glob, or a folder with .tar files at its top is shards."""
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES:
            return "list"
        if path.suffix.lower() == ".tar":
            return "shards"
        raise InputError(f"{spec}: a list file must end in {', '.join(LIST_SUFFIXES)}")
    if path.is_dir():
        return "shards" if any(path.glob("*.tar")) else "folder"
    if any(c in spec for c in "*?["):
        return "shards"
    raise InputError(f"no such file or folder: {spec}")


def list_input(spec: str, kind: str, columns: dict[str, str | None]) -> Listing:
    """INPUT -> its Listing; `columns` names the list's path/id/caption columns (None:
    the usual names)."""
    kind = kind_of(spec) if kind == "auto" else kind
    if kind == "folder":
        return _folder(spec)
    if kind == "shards":
        return _shards(spec)
    return _rows(Path(spec), columns)


def _folder(spec: str) -> Listing:
    """Every file under the folder (as `index add` walks it); ids relative to it."""
    from contrastkit.service.commands.index.add import collect

    if not Path(spec).is_dir():
        raise InputError(f"{spec} is not a folder")
    skips: list[Skip] = []
    # collect names each refused file in its warning: that line is the example
    found = collect([spec], lambda m: skips.append(Skip(m, "refused id", m)))
    return Listing([Item(id_, str(path), path=path) for id_, path in found], skips)


def _shards(spec: str) -> Listing:
    """The samples of tar shards (KEY.jpg + optional KEY.txt); ids SHARD/KEY with SHARD
    relative to the folder given (its name for a file or a glob)."""
    from contrastkit.training.data.base import DataError
    from contrastkit.training.data.shards import scan_shards, shard_paths

    try:
        paths = [spec] if spec.endswith(".tar") and Path(spec).is_file() else shard_paths(spec)
        scan = scan_shards(paths)
    except DataError as e:
        raise InputError(str(e)) from e
    root = Path(spec) if Path(spec).is_dir() else None
    items = []
    for (s, offset, size), key, caption in zip(scan.where, scan.keys, scan.captions, strict=True):
        shard = paths[s]
        name = Path(shard).relative_to(root).as_posix() if root else Path(shard).name
        items.append(
            Item(f"{name}/{key}", f"{shard}:{key}", where=(shard, offset, size), caption=caption)
        )
    skips = [Skip(example, reason, example) for reason, example in scan.example.items()]
    # every skipped sample counts, though only the first of each reason has an example
    for reason, n in scan.skipped.items():
        skips += [Skip(scan.example[reason], reason, scan.example[reason])] * (n - 1)
    return Listing(items, skips)


def _rows(path: Path, columns: dict[str, str | None]) -> Listing:
    """A CSV/JSONL/parquet list: a path column, optional id and caption columns; relative
    paths are read against the list's folder; ids default to the path as written."""
    rows = list(_read_rows(path))
    names = set().union(*(r.keys() for r in rows)) if rows else set()
    path_col = str(_column(columns.get("path"), PATH_COLUMNS, names, path, required=True))
    id_col = _column(columns.get("id"), ("id",), names, path)
    caption_col = _column(columns.get("caption"), CAPTION_COLUMNS, names, path)
    items: list[Item] = []
    skips: list[Skip] = []
    seen: set[str] = set()
    for n, row in enumerate(rows, 1):
        where = row.get(path_col)
        if where in (None, ""):
            skips.append(Skip(f"row {n}", "no path", f"{path} row {n}"))
            continue
        id_ = str(row[id_col]) if id_col and row.get(id_col) not in (None, "") else str(where)
        if id_ in seen:
            skips.append(Skip(id_, "duplicate id", f"{path} row {n}: id {id_!r} again"))
            continue
        seen.add(id_)
        file = path.parent / str(where)  # an absolute path stays itself
        caption = row.get(caption_col) if caption_col else None
        items.append(Item(id_, str(file), path=file, caption=_text(caption)))
    return Listing(items, skips)


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _column(
    given: str | None, usual: tuple[str, ...], names: set[str], path: Path, required: bool = False
) -> str | None:
    """The column to use: the one given (which must exist), else the first usual name."""
    if given is not None:
        if given not in names:
            raise InputError(f"{path} has no column {given!r} (it has {sorted(names)})")
        return given
    found = next((c for c in usual if c in names), None)
    if found is None and required:
        raise InputError(
            f"{path} has none of the columns {list(usual)} (name the path column with "
            f"--path-column; it has {sorted(names)})"
        )
    return found


def _read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a list file as dicts."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)
    elif suffix == ".parquet":
        from contrastkit.service.commands.embed.parquet import pyarrow_parquet

        yield from pyarrow_parquet().read_table(path).to_pylist()
    else:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield _json_row(line, path, n)


def _json_row(line: str, path: Path, n: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{path} line {n} is not JSON ({e})") from e
    if not isinstance(row, dict):
        raise InputError(f"{path} line {n} is not a JSON object")
    return row
