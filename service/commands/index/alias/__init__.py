"""`contrastive index alias set|rm|ls`: the aliases of collections
(contrastkit.service.index.aliases), one module per subcommand, registered in service/cli.py's
nested table.

Each works where `add` and `search` do (targets.py): on a running server over HTTP (--url,
or the local server when one answers), else in-process on the backend the settings select;
a server holding the FAISS folder must be asked over HTTP, which is why the probe comes
first. The shared flags and the two ways of reaching the aliases are here.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from contrastkit.service.client import ContrastiveClient
    from contrastkit.service.index.backend import CollectionBackend

HELP = """\
An alias is a second name for a collection, switched atomically: every collection
operation (search, add, get, delete items, describe) takes it where it takes a name.

    contrastive index alias set photos photos-v2   # create, or switch: one atomic step
    contrastive index alias ls
    contrastive index alias rm photos              # the collection stays

An alias may not be a collection's name, nor point to a missing collection; a collection
an alias points to cannot be deleted until the alias is switched or removed.
"""


class Aliases(Protocol):
    """The aliases of one backend, here or on a server."""

    def list_aliases(self) -> dict[str, str]: ...

    def set_alias(self, alias: str, collection: str) -> str | None: ...

    def remove_alias(self, alias: str) -> str: ...

    def close(self) -> None: ...


def alias_flags(p: argparse.ArgumentParser) -> None:
    """--help text and where to work: --url / --local / --api-key / --collections-dir."""
    p.description = HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", default=None, help="a running server (default: the local one)")
    where.add_argument("--local", action="store_true", help="in-process even if one runs")
    p.add_argument("--api-key", default=None, help="Bearer key for --url")
    p.add_argument(
        "--collections-dir",
        default=None,
        help="in-process collections folder [CONTRASTIVE_COLLECTIONS_DIR or ./collections]",
    )


def open_aliases(args: argparse.Namespace) -> Aliases:
    """The aliases the flags point to: a server's when one is named or answers."""
    from contrastkit.service.commands.index.targets import running_server

    url = args.url or (None if args.local else running_server())
    return Remote(args, url) if url else Local(args)


class Local:
    """In-process: the backend the settings select."""

    def __init__(self, args: argparse.Namespace) -> None:
        from contrastkit.service.commands.index.options import settings_of
        from contrastkit.service.state import open_collections

        self.store: CollectionBackend = open_collections(settings_of(args))

    def list_aliases(self) -> dict[str, str]:
        return self.store.aliases()

    def set_alias(self, alias: str, collection: str) -> str | None:
        return self.store.set_alias(alias, collection)

    def remove_alias(self, alias: str) -> str:
        return self.store.remove_alias(alias)

    def close(self) -> None:
        self.store.close()


class Remote:
    """Over HTTP: the server's aliases (the client has the same three methods)."""

    def __init__(self, args: argparse.Namespace, url: str) -> None:
        from contrastkit.service.client import ContrastiveClient
        from contrastkit.service.commands.index.options import settings_of

        key = args.api_key or next(iter(settings_of(args).api_keys), None)
        self.client: ContrastiveClient = ContrastiveClient(url, api_key=key)

    def list_aliases(self) -> dict[str, str]:
        return self.client.list_aliases()

    def set_alias(self, alias: str, collection: str) -> str | None:
        return self.client.set_alias(alias, collection)

    def remove_alias(self, alias: str) -> str:
        return self.client.remove_alias(alias)

    def close(self) -> None:
        self.client.close()
