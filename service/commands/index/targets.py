"""Where `add` and `search` work: a Target, in this process or on a running server.

Target is the protocol both implementations satisfy (LocalTarget in local.py, RemoteTarget
in remote.py; mypy checks them against it where `open_target` returns them). Which one a
command gets: --url names a server; else, unless an in-process flag or --local says
"here", the server CONTRASTIVE_URL names, or a local server that answers; else here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from contrastkit.service.commands.index.images import ImageFile
from contrastkit.service.commands.index.local import LocalTarget
from contrastkit.service.commands.index.options import LOCAL_FLAGS
from contrastkit.service.commands.index.remote import RemoteTarget

URL_ENV = "CONTRASTIVE_URL"  # the --url of the environment
PROBE_TIMEOUT_S = 0.5  # a local server answers /readyz in milliseconds; none: refused at once


class Target(Protocol):
    """One collection to fill and search, and what embeds for it."""

    def present(self, ids: list[str]) -> set[str]:
        """Which of `ids` the collection holds already."""
        ...

    def load(self, path: Path) -> tuple[Any, Any]:
        """A file -> (what `upsert` sends for it, the decoded image); NotAnImageError."""
        ...

    def upsert(self, files: list[ImageFile], warn: Callable[[str], None]) -> int:
        """Embed and store `files` -> items written (refused ones skipped with a warning)."""
        ...

    def search(
        self, text: str, k: int, where: dict[str, Any] | None
    ) -> list[tuple[str, float, Any]]:
        """The k best (id, score, metadata) for `text`, best first."""
        ...

    @property
    def count(self) -> int:
        """Items in the collection."""
        ...

    def close(self) -> None: ...


def open_target(args: argparse.Namespace, create: bool) -> Target:
    """The Target the flags ask for; the collection is created if missing and `create`."""
    url = args.url or (None if wants_here(args) else env_server() or running_server())
    return RemoteTarget(args, create, url) if url else LocalTarget(args, create)


def wants_here(args: argparse.Namespace) -> bool:
    """Whether --local or an in-process flag asks for the work in this process."""
    return bool(getattr(args, "local", False)) or any(getattr(args, f, None) for f in LOCAL_FLAGS)


def env_server() -> str | None:
    """The server CONTRASTIVE_URL names, said on stderr: a variable set long ago must not
    choose the server unseen."""
    url = os.environ.get(URL_ENV, "").strip().rstrip("/")
    if url:
        print(
            f"using the server at {url} ({URL_ENV}; pass --url for another, --local to load "
            "the model here)",
            file=sys.stderr,
        )
    return url or None


def running_server() -> str | None:
    """The local server's URL when one answers, else None. Loading the model here takes
    seconds to a minute, and a FAISS folder is one process's: a server already running is
    the better place for the work."""
    url = local_server_url()
    if not probe_server(url):
        return None
    print(
        f"a server is running at {url}; using it (pass --local to load the model here)",
        file=sys.stderr,
    )
    return url


def local_server_url() -> str:
    """Where `contrastive serve` listens with these settings (env CONTRASTIVE_HOST/PORT)."""
    from contrastkit.service.settings import Settings

    s = Settings()
    # a server bound to every address is reached on loopback
    host = "127.0.0.1" if s.host in ("", "0.0.0.0") else "[::1]" if s.host == "::" else s.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal in a URL
    return f"http://{host}:{s.port}"


def probe_server(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether our server answers GET URL/readyz (ready, or 503 while loading/draining)."""
    import httpx

    try:
        r = httpx.get(f"{url}/readyz", timeout=timeout)
        body = r.json()
    except (httpx.HTTPError, ValueError):
        return False
    # Some other program on the port answers too: only our readiness body counts.
    return r.status_code in (200, 503) and isinstance(body, dict) and "status" in body
