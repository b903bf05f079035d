"""`contrastive index alias rm ALIAS`: remove an alias; its collection stays."""

from __future__ import annotations

import argparse

from contrastkit.service.commands.index.alias import alias_flags, open_aliases
from contrastkit.service.commands.index.report import run_reported


def add_arguments(p: argparse.ArgumentParser) -> None:
    alias_flags(p)
    p.add_argument("alias")


def run(args: argparse.Namespace) -> int:
    """0; 1 with a message on stderr on error (no such alias included)."""
    return run_reported("alias rm", remove, args)


def remove(args: argparse.Namespace) -> int:
    aliases = open_aliases(args)
    try:
        name = aliases.remove_alias(args.alias)
    finally:
        aliases.close()
    print(f"removed alias {args.alias!r} (it pointed to {name!r})")
    return 0
