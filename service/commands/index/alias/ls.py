"""`contrastive index alias ls`: every alias and the collection it points to."""

from __future__ import annotations

import argparse

from contrastkit.service.commands.index.alias import alias_flags, open_aliases
from contrastkit.service.commands.index.report import run_reported


def add_arguments(p: argparse.ArgumentParser) -> None:
    alias_flags(p)


def run(args: argparse.Namespace) -> int:
    """0; 1 with a message on stderr on error."""
    return run_reported("alias ls", list_aliases, args)


def list_aliases(args: argparse.Namespace) -> int:
    aliases = open_aliases(args)
    try:
        found = aliases.list_aliases()
    finally:
        aliases.close()
    if not found:
        print("no aliases")
    width = max((len(a) for a in found), default=0)
    for alias, name in sorted(found.items()):
        print(f"{alias:<{width}}  -> {name}")
    return 0
