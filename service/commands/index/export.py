"""`contrastive index export NAME FILE`: a collection (items, vectors, model id, index
spec) to a JSON Lines file, from the backend the settings select."""

from __future__ import annotations

import argparse
from pathlib import Path

from contrastkit.service.commands.index.local import open_backend_here
from contrastkit.service.commands.index.options import settings_of, transfer_arguments
from contrastkit.service.commands.index.report import progress, run_reported


def add_arguments(p: argparse.ArgumentParser) -> None:
    transfer_arguments(p)


def run(args: argparse.Namespace) -> int:
    """0; 2 on a usage or data error, 1 when the backend cannot be reached."""
    return run_reported("export", export, args)


def export(args: argparse.Namespace) -> int:
    """Write the collection to FILE; print what was written."""
    from contrastkit.service.index.transfer import export_collection

    store = open_backend_here(settings_of(args), args.collection, must_exist=True)
    try:
        header = export_collection(
            store, args.collection, Path(args.file), progress=progress("export")
        )
    finally:
        store.close()
    print(
        f"exported {header.count} items of {args.collection!r} ({header.model_id}, "
        f"dim {header.dim}) to {args.file}"
    )
    return 0
