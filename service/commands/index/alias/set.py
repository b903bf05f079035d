"""`contrastive index alias set ALIAS NAME`: point ALIAS at collection NAME (create it, or
switch it atomically)."""

from __future__ import annotations

import argparse

from contrastkit.service.commands.index.alias import alias_flags, open_aliases
from contrastkit.service.commands.index.report import run_reported


def add_arguments(p: argparse.ArgumentParser) -> None:
    alias_flags(p)
    p.add_argument("alias")
    p.add_argument("collection", metavar="NAME", help="the collection it is to point to")


def run(args: argparse.Namespace) -> int:
    """0; 1 with a message on stderr on error."""
    return run_reported("alias set", set_alias, args)


def set_alias(args: argparse.Namespace) -> int:
    aliases = open_aliases(args)
    try:
        before = aliases.set_alias(args.alias, args.collection)
    finally:
        aliases.close()
    was = f" (was {before!r})" if before is not None else ""
    print(f"alias {args.alias!r} -> {args.collection!r}{was}")
    return 0
