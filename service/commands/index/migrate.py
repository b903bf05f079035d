"""`contrastive index migrate NAME --to-model MODEL [--alias ALIAS] [--new-name NEW]`: a
collection rebuilt in another model's space from its items' sources, then an alias
switched to it atomically (the work is in migration.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contrastkit.service.commands.index.migration import (
    Hooks,
    Migration,
    missing_lines,
    plan,
    summary,
    write_report,
)
from contrastkit.service.commands.index.report import run_reported

HELP = """\
Rebuild collection NAME in MODEL's space, from each item's source (the file path
`index add` stored: images are decoded as `add` decodes them; other text sources are
embedded as text when MODEL has a text tower), with the same ids and metadata, into NEW
(default NAME-<model tag>); then point an alias at NEW, atomically. The old collection
stays: to roll back, `contrastive index alias set ALIAS OLD`; when done, drop it.

    contrastive index migrate photos --to-model open_clip:ViT-B-32 --alias photos-live
    contrastive index migrate photos-live --to-model export/   # NAME an alias: it switches

An alias may not shadow a collection's name, so when NAME is a collection, --alias names
the alias to create (or switch) and NAME's users should search ALIAS from then on; when
NAME is already an alias, NAME itself is switched.

Items without a source, or whose source cannot be read, are printed and written to the
report (--report, default ./NEW.migration.json) and counted; with any of them the alias
is not switched (exit 3) unless --allow-missing.

The old collection is only read: it keeps serving searches and writes while NEW is
built. Before switching, migrate re-reads it and embeds what was added or changed
meanwhile (and removes what was deleted), pass after pass until one finds nothing to do.
A rerun (after a kill, say) resumes: items NEW holds with the same source and metadata
are skipped.

Where it runs: with --url, CONTRASTIVE_URL, or a local server that answers (as `add`
finds one), the server does it (POST /v1/admin/migrations, with the admin key: --admin-key
or CONTRASTIVE_ADMIN_KEY): it serves and takes writes throughout, holds writes for the
last pass so that none is missed, and loads MODEL first when it does not serve it; this
command follows the progress, and Ctrl-C cancels (run it again to resume). Otherwise, or
with --local or an in-process flag, it runs here (with FAISS, no server may hold the
folder; items missing are also written to --report).

Exit 0 switched; 1 on an error; 3 built but not switched (missing items).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("collection", metavar="NAME", help="a collection, or an alias of one")
    p.add_argument("--to-model", required=True, metavar="MODEL", help="the new model reference")
    p.add_argument("--new-name", default=None, metavar="NEW", help="[NAME-<model tag>]")
    p.add_argument("--alias", default=None, help="the alias to switch (NAME a collection)")
    p.add_argument("--allow-missing", action="store_true", help="switch despite missing items")
    p.add_argument("--report", default=None, type=Path, help="[./NEW.migration.json]")
    p.add_argument("--batch", type=int, default=32, help="items per model batch [32]")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag/file")
    p.add_argument("--device", default=None, help="[CONTRASTIVE_DEVICE or auto]")
    p.add_argument(
        "--collections-dir",
        default=None,
        help="collections folder [CONTRASTIVE_COLLECTIONS_DIR or ./collections]",
    )
    p.add_argument("--url", default=None,
                   help="ask this server to migrate [CONTRASTIVE_URL, else the local server "
                   "when one answers, else in-process]")  # fmt: skip
    p.add_argument("--local", action="store_true", help="in-process even with a server running")
    p.add_argument("--admin-key", default=None,
                   help="the server's admin key [CONTRASTIVE_ADMIN_KEY]")  # fmt: skip


def run(args: argparse.Namespace, hooks: Hooks | None = None) -> int:
    """0 switched; 3 built but not switched; 1 with a message on stderr on error."""
    url = _server(args)
    if url is not None:
        from contrastkit.service.commands.index.migrate_remote import migrate_remote

        return run_reported("migrate", lambda a: migrate_remote(a, url), args)
    return run_reported("migrate", lambda a: migrate(a, hooks), args)


def _server(args: argparse.Namespace) -> str | None:
    """The server to ask, as `add` and `search` find one: --url; else, unless --local or
    an in-process flag (--collections-dir, --device, --pretrained), CONTRASTIVE_URL or a
    local server that answers; else None (in-process)."""
    from contrastkit.service.commands.index.targets import env_server, running_server

    if args.url:
        return str(args.url).rstrip("/")
    here = args.local or any((args.collections_dir, args.device, args.pretrained))
    return None if here else env_server() or running_server()


def migrate(args: argparse.Namespace, hooks: Hooks | None = None) -> int:
    from contrastkit.service.commands.index.options import settings_of
    from contrastkit.service.commands.index.reembed import Reembedder
    from contrastkit.service.state import open_collections
    from contrastkit.training.encoders import load_encoder

    if args.batch < 1:
        raise ValueError("--batch must be at least 1")
    settings = settings_of(argparse.Namespace(**{**vars(args), "model": args.to_model}))
    encoder = load_encoder(args.to_model, args.pretrained, settings.device)
    store = open_collections(settings)
    try:
        p = plan(store, args.collection, args.alias, args.new_name, encoder.model_id)
        job = Migration(store, Reembedder(encoder, settings.max_image_pixels), p, args.batch, hooks)
        out = job.finish(job.build(), args.allow_missing)
        report = args.report or Path(f"{p.new}.migration.json")
        write_report(report, p, encoder.model_id, out)
        for line in missing_lines([m.to_json() for m in out.missing], len(out.missing)):
            print(line, file=sys.stderr)
        if not out.switched:
            print(
                f"contrastive index migrate: {len(out.missing)} items could not be embedded "
                f"(listed in {report}); alias {p.alias!r} not switched (--allow-missing to "
                "switch anyway)",
                file=sys.stderr,
            )
            return 3
    finally:
        store.close()
    print(summary(p, out.written, len(out.missing), out.previous))
    return 0
