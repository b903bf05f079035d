"""`contrastive index migrate` against a running server: the server does the work
(POST /v1/admin/migrations) while it serves; this process starts it, loads the model
into the server first when it does not serve it, and follows the progress.

Ctrl-C cancels the migration on the server (it stops after its batch; run the command
again to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contrastkit.service.client import ContrastiveClient

POLL_S = 1.0
ADMIN_KEY_ENV = "CONTRASTIVE_ADMIN_KEY"
LOAD_WAIT_S = 600  # a model load on the server, at most


def migrate_remote(args: argparse.Namespace, url: str) -> int:
    """0 switched; 3 built but not switched (items missing); 1 failed or cancelled."""
    from contrastkit.service.client import ContrastiveClient

    with ContrastiveClient(url, api_key=_admin_key(args)) as client:
        status = _start(client, args)
        print(
            f"migrating {status['collection']!r} into {status['new']!r} on {url}; alias "
            f"{status['alias']!r} switches at the end (Ctrl-C cancels)",
            file=sys.stderr,
        )
        try:
            status = _follow(client, status["collection"])
        except KeyboardInterrupt:
            client.cancel_migration(status["collection"])
            print("cancelled on the server; run the command again to resume", file=sys.stderr)
            return 1
    return _outcome(status)


def _admin_key(args: argparse.Namespace) -> str | None:
    """--admin-key, else CONTRASTIVE_ADMIN_KEY, else this machine's configured admin or
    API key (the server's own settings, when it runs here)."""
    if args.admin_key:
        return str(args.admin_key)
    if os.environ.get(ADMIN_KEY_ENV):
        return os.environ[ADMIN_KEY_ENV]
    from contrastkit.service.settings import Settings

    return next(iter(Settings().admin_access), None)


def _start(client: ContrastiveClient, args: argparse.Namespace) -> dict[str, Any]:
    """Start the migration; a model the server does not serve is loaded there first."""
    from contrastkit.service.client import ServiceError

    start = dict(
        collection=args.collection, model=args.to_model, alias=args.alias,
        new_name=args.new_name, allow_missing=args.allow_missing, batch=args.batch,
    )  # fmt: skip
    try:
        return client.start_migration(**start)
    except ServiceError as e:
        if e.code != "model_not_found":
            raise
    print(f"loading {args.to_model!r} on the server first", file=sys.stderr)
    op = client.load_model(args.to_model, wait=LOAD_WAIT_S)
    if op.get("status") != "done":
        raise ValueError(f"the server could not load {args.to_model!r}: {op.get('error')}")
    return client.start_migration(**start)


def _follow(client: ContrastiveClient, name: str) -> dict[str, Any]:
    """Poll until the migration ends, one progress line a second -> its last status."""
    while True:
        status = client.migration(name)
        if status["state"] != "running":
            return status
        if status["total"]:  # 0: the pass is still reading what to do
            print(
                f"contrastive index migrate: pass {status['pass']}: "
                f"{status['done']}/{status['total']} items",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(POLL_S)


def _outcome(s: dict[str, Any]) -> int:
    from contrastkit.service.commands.index.migration import Plan, missing_lines, summary

    for line in missing_lines(s["missing"], s["missing_count"]):
        print(line, file=sys.stderr)
    if s["state"] == "switched":
        p = Plan(s["collection"], s["new"], s["alias"])
        print(summary(p, s["written"], s["missing_count"], s["previous"], s["held_seconds"]))
        return 0
    if s["state"] == "built":
        print(
            f"contrastive index migrate: {s['missing_count']} items could not be embedded "
            f"(the first {len(s['missing'])} above); alias {s['alias']!r} not switched "
            "(--allow-missing to switch anyway)",
            file=sys.stderr,
        )
        return 3
    why = s.get("error") or "cancelled on the server"
    print(f"contrastive index migrate: {s['state']}: {why}", file=sys.stderr)
    return 1
