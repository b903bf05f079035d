"""Flags and help texts that several `contrastive index` subcommands share, and the
service Settings those flags give.

Imports nothing heavy: `contrastive index SUBCOMMAND --help` builds its parser from here.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contrastkit.service.settings import Settings

OVERVIEW = """\
`contrastive index`: fill a collection from folders of images, and search it by text.

    contrastive index add photos ~/Pictures --model open_clip:ViT-B-32     # in-process
    contrastive index add photos ~/Pictures --url http://127.0.0.1:8000 --create
    contrastive index search photos "a red bicycle" -k 5 [--url ...] [--where '{"k": "v"}']
    contrastive index repair photos [--dir DIR]     # salvage a collection refused as corrupt
    contrastive index export photos photos.jsonl    # the whole collection to a file
    contrastive index import photos photos.jsonl [--force]   # and back, on any backend

In-process, the encoder is loaded here and the collections folder is opened directly: do
not point it at a folder that a running server holds open (use --url for that). Over HTTP,
the server embeds and stores; images travel base64 in batches.

Without --url and without in-process flags (--model, --pretrained, --device,
--collections-dir), `add` and `search` use the server CONTRASTIVE_URL names (saying so on
stderr); without that they first ask the local server
(http://CONTRASTIVE_HOST:CONTRASTIVE_PORT, 127.0.0.1:8000 by default) for /readyz, waiting
at most 0.5 s; when it answers, they use it (saying so on stderr) rather than load the
model again and open the folder that server holds. --local always runs in-process.

`add` walks each PATH (a folder, recursively, hidden entries skipped; or a single file).
Item ids are paths relative to the folder given (absolute for single files), so a rerun
skips what is already stored and resumes an interrupted run. Files that are not images are
skipped with a warning; each stored item's metadata is {"path": absolute path, "bytes": size},
plus {"thumbnail": "data:image/jpeg;base64,..."} with --thumbnails, which the web page shows
in its search results. Each item's source (what it can be embedded again from) is the
file's absolute path.

    contrastive index alias set photos photos-v2   # "photos" now answers from photos-v2
    contrastive index alias ls
    contrastive index alias rm photos

    contrastive index migrate photos --to-model open_clip:ViT-B-32 --alias photos-live
        # rebuild from the items' sources with another model, then switch photos-live to it
"""

TRANSFER_HELP = """\
Export writes a collection to a JSON Lines file (a header line with the model id, dim and
index spec, then one line per item: id, metadata and the vector, base64 float32); import
creates a collection from one. Both run in-process on the backend the settings select
(CONTRASTIVE_COLLECTIONS_BACKEND, CONTRASTIVE_QDRANT_URL, ...), which is how a collection
moves from FAISS to Qdrant:

    CONTRASTIVE_COLLECTIONS_BACKEND=faiss contrastive index export photos p.jsonl
    CONTRASTIVE_COLLECTIONS_BACKEND=qdrant CONTRASTIVE_QDRANT_URL=http://qdrant:6333 \\
        contrastive index import photos p.jsonl

With FAISS, stop the server first (the folder is one process's).

Import is all or nothing. It checks the whole file before it creates (or, with --force,
drops) anything: the header (dim at most 65536), then every item by the rules the API
applies (an id of 1-256 characters, valid Unicode, no NUL; metadata a JSON object of
finite numbers; a vector finite and not all zeros). A vector off unit length is scaled
to unit length, as the API does with raw vectors (one within 1e-5 of it is kept bit for
bit). The items are then written out of sight, and the collection appears only once all
are stored: a failure, or a kill, leaves no collection to serve.

Exit 0 ok; 2 on a usage or data error (one line: a bad item is named by its line and
item number, with what is wrong; nothing is imported); 1 when the backend cannot be
reached.
"""

# The in-process flags: any of them given says "run here", so no server is looked for.
LOCAL_FLAGS = ("model", "pretrained", "device", "collections_dir")


def describe(p: argparse.ArgumentParser, text: str) -> None:
    """Show `text` as the subcommand's --help description, its line breaks kept (the
    command table created the parser with the one-line help as its description)."""
    p.description = text
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def connection_flags(p: argparse.ArgumentParser) -> None:
    """Where `add` and `search` run: a server (--url), in-process, or the local server."""
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        default=None,
        help="a running server (e.g. http://127.0.0.1:8000); omit: CONTRASTIVE_URL, else "
        "the local server when one answers, else in-process",
    )
    where.add_argument(
        "--local",
        action="store_true",
        help="in-process even when a local server is running",
    )
    p.add_argument("--api-key", default=None, help="Bearer key for --url")
    p.add_argument("--model", default=None, help="in-process model [CONTRASTIVE_MODEL or builtin]")
    p.add_argument("--pretrained", default=None, help="in-process open_clip pretrained tag/file")
    p.add_argument("--device", default=None, help="in-process device [CONTRASTIVE_DEVICE or auto]")
    p.add_argument(
        "--collections-dir",
        default=None,
        help="in-process collections folder [CONTRASTIVE_COLLECTIONS_DIR or ./collections]",
    )


def transfer_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments `export` and `import` share: NAME, FILE and the folder."""
    describe(p, TRANSFER_HELP)
    p.add_argument(
        "--collections-dir",
        "--dir",
        dest="collections_dir",
        default=None,
        metavar="DIR",
        help="FAISS collections folder (Qdrant: local mode in DIR/qdrant when no "
        "CONTRASTIVE_QDRANT_URL) [CONTRASTIVE_COLLECTIONS_DIR or ./collections]",
    )
    p.add_argument("collection", metavar="NAME")
    p.add_argument("file", metavar="FILE", help="the JSON Lines file")


def settings_of(args: argparse.Namespace) -> Settings:
    """The service's Settings with the flags that name one of them (--model, --pretrained,
    --device, --collections-dir) over the environment, as `contrastive serve` reads them."""
    from contrastkit.service.commands.serve import settings_from_args

    return settings_from_args(args)
