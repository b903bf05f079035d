"""`contrastive index search COLLECTION TEXT`: the best matches of a text, as a table."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from contrastkit.service.commands.index.options import connection_flags
from contrastkit.service.commands.index.report import run_reported
from contrastkit.service.commands.index.targets import open_target


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("collection")
    p.add_argument("text")
    p.add_argument("-k", type=int, default=10, help="results [10]")
    p.add_argument("--where", default=None, help='metadata equality filter, JSON: {"f": v}')
    connection_flags(p)


def run(args: argparse.Namespace) -> int:
    """0; 1 with a message on stderr on error."""
    return run_reported("search", search, args)


def search(args: argparse.Namespace) -> int:
    """Print the collection's best matches of TEXT as a table."""
    where = None
    if args.where is not None:
        where = json.loads(args.where)
        if not isinstance(where, dict):
            raise ValueError('--where must be a JSON object, e.g. {"path": "a.png"}')
    if args.k < 1:
        raise ValueError("-k must be at least 1")
    target = open_target(args, create=False)
    try:
        hits = target.search(args.text, args.k, where)
    finally:
        target.close()
    print(format_hits(hits))
    return 0


def format_hits(hits: Sequence[tuple[str, float, Any]]) -> str:
    """A ranked table: rank, score, id, metadata (JSON; a thumbnail shown by its length)."""
    if not hits:
        return "no results"
    width = max(2, *(len(id_) for id_, _, _ in hits))
    lines = [f"{'rank':>4}  {'score':>7}  {'id':<{width}}  metadata"]
    for rank, (id_, score, meta) in enumerate(hits, 1):
        if isinstance(meta, dict) and isinstance(meta.get("thumbnail"), str):
            meta = {**meta, "thumbnail": f"<{len(meta['thumbnail'])} characters>"}
        meta_json = json.dumps(meta, ensure_ascii=False, sort_keys=True)
        lines.append(f"{rank:>4}  {score:>7.4f}  {id_:<{width}}  {meta_json}")
    return "\n".join(lines)
