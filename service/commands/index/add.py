"""`contrastive index add COLLECTION PATH...`: embed images (files or folders, recursive)
into a collection; resumable (ids already stored are skipped)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from contrastkit.service.commands.index.images import ImageFile, NotAnImageError
from contrastkit.service.commands.index.options import OVERVIEW, connection_flags, describe
from contrastkit.service.commands.index.report import run_reported
from contrastkit.service.commands.index.targets import open_target


def add_arguments(p: argparse.ArgumentParser) -> None:
    describe(p, OVERVIEW)
    p.add_argument("collection")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    connection_flags(p)
    p.add_argument("--batch", type=int, default=32, help="images per model batch/request [32]")
    p.add_argument(
        "--thumbnails",
        action="store_true",
        help="store a JPEG thumbnail (a few kB) in each item's metadata, for the web page",
    )
    p.add_argument(
        "--thumbnail-size",
        type=int,
        default=128,
        metavar="PX",
        help="longest side of the thumbnails [128]",
    )
    p.add_argument(
        "--create",
        action="store_true",
        help="create the collection if it is missing (in-process it always is)",
    )


def run(args: argparse.Namespace) -> int:
    """0; 1 with a message on stderr on error."""
    return run_reported("add", add, args)


def _walk(root: Path) -> Iterator[Path]:
    """Files under `root`, sorted, skipping hidden files and folders; links to folders are
    not followed (no cycles)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


def collect(paths: Sequence[str], warn: Callable[[str], None]) -> list[tuple[str, Path]]:
    """PATHs -> (id, file): ids relative to a folder PATH, absolute for a file PATH."""
    out: list[tuple[str, Path]] = []
    seen: dict[str, Path] = {}
    for given in paths:
        root = Path(given)
        if root.is_dir():
            found = [(f.relative_to(root).as_posix(), f) for f in _walk(root)]
        elif root.is_file():
            found = [(os.path.abspath(root), root)]
        else:
            raise FileNotFoundError(f"no such file or folder: {given}")
        for id_, path in found:
            refused = _refused_id(id_)
            if refused is not None:
                warn(f"skipping {path}: {refused}")
            elif id_ in seen:
                warn(f"skipping {path}: id {id_!r} is already taken by {seen[id_]}")
            else:
                seen[id_] = path
                out.append((id_, path))
    return out


def _refused_id(id_: str) -> str | None:
    """Why the item rules (the API's) refuse `id_` as an id, or None. A file name that is
    not UTF-8 reads as lone surrogates, which no collection can store."""
    from contrastkit.service.index.items import ItemError, check_id  # numpy: not needed for --help

    try:
        check_id(id_, "its id")
    except ItemError as e:
        return e.message
    return None


def _warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def add(args: argparse.Namespace) -> int:
    """Embed and store every new image of the PATHs; print what was added."""
    from tqdm import tqdm

    if args.batch < 1:
        raise ValueError("--batch must be at least 1")
    if not 16 <= args.thumbnail_size <= 512:
        raise ValueError("--thumbnail-size must be between 16 and 512 pixels")
    files = collect(args.paths, _warn)
    target = open_target(args, create=args.create or not args.url)
    thumb_size = args.thumbnail_size if args.thumbnails else None

    def load(path: Path) -> tuple[Any, str | None]:
        """-> (what target.upsert sends, the thumbnail or None); runs in the decode pool."""
        payload, image = target.load(path)
        if thumb_size is None:
            return payload, None
        from contrastkit.service.runtime.thumbnails import thumbnail_data_url

        return payload, thumbnail_data_url(image, thumb_size)

    added = present = not_images = 0
    workers = min(8, os.cpu_count() or 1)
    try:
        with (
            ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool,
            tqdm(total=len(files), unit="file", desc=args.collection, disable=None) as bar,
        ):
            for start in range(0, len(files), args.batch):
                chunk = files[start : start + args.batch]
                have = target.present([id_ for id_, _ in chunk])
                todo = [(id_, path) for id_, path in chunk if id_ not in have]
                present += len(chunk) - len(todo)
                batch: list[ImageFile] = []
                for (id_, path), loaded in zip(
                    todo, pool.map(lambda item: _try(load, item[1]), todo), strict=True
                ):
                    if isinstance(loaded, NotAnImageError):
                        _warn(f"skipping {path}: {loaded}")
                        not_images += 1
                    else:
                        batch.append(ImageFile(id_, path, path.stat().st_size, *loaded))
                if batch:
                    added += target.upsert(batch, _warn)
                bar.update(len(chunk))
        total = target.count
    finally:
        target.close()
    print(
        f"added {added} items to {args.collection!r} ({present} already present, "
        f"{not_images} not images); it holds {total} items"
    )
    return 0


def _try(fn: Callable[[Path], Any], path: Path) -> Any:
    """fn(path), or the NotAnImageError it raised (a worker's result, not its failure)."""
    try:
        return fn(path)
    except NotAnImageError as e:
        return e
