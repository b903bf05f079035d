"""`contrastive index repair NAME [--dir DIR]`: salvage a collection of the embedded store
refused as corrupt (contrastkit.service.index.embedded.repair does the work and says what it does;
for a collection.json it cannot trust, what the files hold and how to restore it)."""

from __future__ import annotations

import argparse

from contrastkit.service.commands.index.options import settings_of
from contrastkit.service.commands.index.report import run_reported

DESCRIPTION = (
    "Salvage a collection refused as corrupt: every readable record of its snapshots and "
    "logs becomes a fresh snapshot; the lost records are listed and the old files moved to "
    "damaged-<utc>/ in its folder. A missing or edited collection.json is not rebuilt (no "
    "other file holds the model id): the repair says what the files hold and how to "
    "restore it, and changes nothing; an older collection.json without a checksum is "
    "checked against the data and sealed. Stop the server first (exit 2 while a process "
    "holds the folder)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.add_argument("collection")
    p.add_argument(
        "--dir",
        "--collections-dir",
        dest="collections_dir",
        default=None,
        metavar="DIR",
        help="the collections folder [CONTRASTIVE_COLLECTIONS_DIR or ./collections]",
    )


def run(args: argparse.Namespace) -> int:
    """0; 1 with a message on stderr on error, 2 while a process holds the folder."""
    return run_reported("repair", repair, args)


def repair(args: argparse.Namespace) -> int:
    # repair works on the embedded store's own files, below the backend interface
    from contrastkit.service.index.embedded.repair import run_repair
    from contrastkit.service.index.factory import require_faiss

    require_faiss()  # the repaired collection is opened to check it: say so before any work
    return run_repair(args.collection, settings_of(args).collections_dir)
