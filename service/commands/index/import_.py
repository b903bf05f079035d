"""`contrastive index import NAME FILE [--force]`: a collection from a file written by
`export`, on the backend the settings select (the module is `import_`: `import` is a
keyword)."""

from __future__ import annotations

import argparse
from pathlib import Path

from contrastkit.service.commands.index.local import open_backend_here
from contrastkit.service.commands.index.options import settings_of, transfer_arguments
from contrastkit.service.commands.index.report import progress, run_reported


def add_arguments(p: argparse.ArgumentParser) -> None:
    transfer_arguments(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the collection NAME if it exists (dropped once the file has been "
        "checked, before the new one is written)",
    )


def run(args: argparse.Namespace) -> int:
    """0; 2 on a usage or data error, 1 when the backend cannot be reached."""
    return run_reported("import", import_file, args)


def import_file(args: argparse.Namespace) -> int:
    """Create the collection from FILE; print what was imported."""
    from contrastkit.service.index.transfer import import_collection, read_file_header

    header = read_file_header(Path(args.file))  # a bad file is refused before opening
    store = open_backend_here(settings_of(args), args.collection, must_exist=False)
    try:
        count = import_collection(
            store,
            args.collection,
            Path(args.file),
            force=args.force,
            progress=progress("import"),
            checked=progress("import (checking the file)"),
        )
    finally:
        store.close()
    print(
        f"imported {count} items into {args.collection!r} ({header.model_id}, "
        f"dim {header.dim}) from {args.file}"
    )
    return 0
