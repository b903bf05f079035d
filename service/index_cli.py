"""`contrastive index`: fill a collection from folders of images, and search it by text.

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
--collections-dir), `add` and `search` first ask the local server
(http://CONTRASTIVE_HOST:CONTRASTIVE_PORT, 127.0.0.1:8000 by default) for /readyz, waiting
at most 0.5 s; when it answers, they use it (saying so on stderr) rather than load the
model again and open the folder that server holds. --local always runs in-process.

`add` walks each PATH (a folder, recursively, hidden entries skipped; or a single file).
Item ids are paths relative to the folder given (absolute for single files), so a rerun
skips what is already stored and resumes an interrupted run. Files that are not images are
skipped with a warning; each stored item's metadata is {"path": absolute path, "bytes": size},
plus {"thumbnail": "data:image/jpeg;base64,..."} with --thumbnails, which the web page shows
in its search results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from service.client import ContrastiveClient
    from service.index.backend import CollectionBackend, CollectionHandle
    from training.encoders import Encoder

MAX_ID_CHARS = 256  # service.index.types.MAX_ID_CHARS (not imported: keeps the CLI start light)
REQUEST_BYTES = 8 * 1024 * 1024  # raw image bytes per HTTP request (base64 adds a third)
_SKIPPABLE = {"image_decode_failed", "image_too_large", "payload_too_large", "invalid_base64"}


# -- arguments ------------------------------------------------------------------------------


# The in-process flags: any of them given says "run here", so no server is looked for.
LOCAL_FLAGS = ("model", "pretrained", "device", "collections_dir")
PROBE_TIMEOUT_S = 0.5  # a local server answers /readyz in milliseconds; none: refused at once


def _connection_flags(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        default=None,
        help="a running server (e.g. http://127.0.0.1:8000); omit: the local server when "
        "one answers, else in-process",
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `add`, `search`, `repair`, `export` and `import` to `contrastive index`."""
    subparsers = parser.add_subparsers(dest="index_command", required=True, metavar="COMMAND")
    add = subparsers.add_parser(
        "add",
        help="embed images (files or folders, recursive) into a collection; resumable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add.add_argument("collection")
    add.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    _connection_flags(add)
    add.add_argument("--batch", type=int, default=32, help="images per model batch/request [32]")
    add.add_argument(
        "--thumbnails",
        action="store_true",
        help="store a JPEG thumbnail (a few kB) in each item's metadata, for the web page",
    )
    add.add_argument(
        "--thumbnail-size",
        type=int,
        default=128,
        metavar="PX",
        help="longest side of the thumbnails [128]",
    )
    add.add_argument(
        "--create",
        action="store_true",
        help="create the collection if it is missing (in-process it always is)",
    )
    search = subparsers.add_parser("search", help="search a collection by text")
    search.add_argument("collection")
    search.add_argument("text")
    search.add_argument("-k", type=int, default=10, help="results [10]")
    search.add_argument("--where", default=None, help='metadata equality filter, JSON: {"f": v}')
    _connection_flags(search)
    repair = subparsers.add_parser(
        "repair",
        help="salvage every readable record of a damaged collection; report what was lost",
        description="Salvage a collection refused as corrupt: every readable record of its "
        "snapshots and logs becomes a fresh snapshot; the lost records are listed and the old "
        "files moved to damaged-<utc>/ in its folder. Stop the server first (exit 2 while a "
        "process holds the folder).",
    )
    repair.add_argument("collection")
    repair.add_argument(
        "--dir",
        "--collections-dir",
        dest="collections_dir",
        default=None,
        metavar="DIR",
        help="the collections folder [CONTRASTIVE_COLLECTIONS_DIR or ./collections]",
    )
    _transfer_arguments(subparsers)


TRANSFER_HELP = """\
Export writes a collection to a JSON Lines file (a header line with the model id, dim and
index spec, then one line per item: id, metadata and the vector, base64 float32); import
creates a collection from one. Both run in-process on the backend the settings select
(CONTRASTIVE_COLLECTIONS_BACKEND, CONTRASTIVE_QDRANT_URL, ...), which is how a collection
moves from FAISS to Qdrant:

    CONTRASTIVE_COLLECTIONS_BACKEND=faiss contrastive index export photos p.jsonl
    CONTRASTIVE_COLLECTIONS_BACKEND=qdrant CONTRASTIVE_QDRANT_URL=http://qdrant:6333 \\
        contrastive index import photos p.jsonl

With FAISS, stop the server first (the folder is one process's). Exit 0 ok; 2 on a usage
or data error (a bad file line is named by its number; an import stopped part-way says
how many items it stored and that the collection is incomplete); 1 when the backend
cannot be reached.
"""


def _transfer_arguments(subparsers: Any) -> None:
    """`export` and `import`."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "--collections-dir",
        "--dir",
        dest="collections_dir",
        default=None,
        metavar="DIR",
        help="FAISS collections folder (Qdrant: local mode in DIR/qdrant when no "
        "CONTRASTIVE_QDRANT_URL) [CONTRASTIVE_COLLECTIONS_DIR or ./collections]",
    )
    for command, help_ in (
        ("export", "write a collection (items, vectors, model id, index spec) to a file"),
        ("import", "create a collection from a file written by `export`"),
    ):
        p = subparsers.add_parser(
            command,
            help=help_,
            description=TRANSFER_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[flags],
        )
        p.add_argument("collection", metavar="NAME")
        p.add_argument("file", metavar="FILE", help="the JSON Lines file")
        if command == "import":
            p.add_argument(
                "--force",
                action="store_true",
                help="replace the collection NAME if it exists (it is dropped first)",
            )


# -- files ----------------------------------------------------------------------------------


def _walk(root: Path) -> Iterator[Path]:
    """Files under `root`, sorted, skipping hidden files and folders; links to folders are
    not followed (no cycles)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


def collect(paths: Sequence[str], warn: Callable[[str], None]) -> list[tuple[str, Path]]:
    """PATHs -> (id, file): ids relative to a folder PATH, absolute for a file PATH."""
    out: list[tuple[str, Path]] = []
    seen: dict[str, Path] = {}
    for given in paths:
        root = Path(given)
        if root.is_dir():
            found = [(f.relative_to(root).as_posix(), f) for f in _walk(root)]
        elif root.is_file():
            found = [(os.path.abspath(root), root)]
        else:
            raise FileNotFoundError(f"no such file or folder: {given}")
        for id_, path in found:
            if len(id_) > MAX_ID_CHARS:
                warn(f"skipping {path}: its id is longer than {MAX_ID_CHARS} characters")
            elif id_ in seen:
                warn(f"skipping {path}: id {id_!r} is already taken by {seen[id_]}")
            else:
                seen[id_] = path
                out.append((id_, path))
    return out


class NotAnImageError(Exception):
    pass


def read_image(path: Path, max_pixels: int, draft_size: int | None) -> tuple[bytes, Any]:
    """A file -> (its bytes, the decoded RGB image); NotAnImageError if it is none.

    PIL first identifies the file from its header, so a large file that is no image costs
    a few KB of reading; an image is read once, then decoded from memory (as the server
    decodes it, including the pixel limit)."""
    from PIL import Image, UnidentifiedImageError

    from service.runtime.images import ImageError, decode_image

    with open(path, "rb") as f:
        try:
            with Image.open(f):
                pass
        except UnidentifiedImageError as e:
            raise NotAnImageError("not an image (no image format recognises it)") from e
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise NotAnImageError(f"not a readable image ({e})") from e
        except Image.DecompressionBombError as e:
            raise NotAnImageError(str(e)) from e
        f.seek(0)
        data = f.read()
    try:
        return data, decode_image(data, max_pixels, draft_size=draft_size, name="it")
    except ImageError as e:  # "it is empty", "it has no pixels", ...: used as it is
        raise NotAnImageError(f"{e.message} ({e.detail})" if e.detail else e.message) from e


@dataclass
class _File:
    id: str
    path: Path
    size: int
    payload: Any  # bytes (HTTP) or the model's input tensor (in-process)
    thumbnail: str | None = None  # a data: URL (--thumbnails)

    @property
    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"path": os.path.abspath(self.path), "bytes": self.size}
        if self.thumbnail is not None:
            meta["thumbnail"] = self.thumbnail
        return meta


# -- where the items go ---------------------------------------------------------------------


class _Local:
    """In-process: the encoder and the collection backend the settings name, here."""

    def __init__(self, args: argparse.Namespace, create: bool) -> None:
        from service.index.types import CollectionError
        from service.settings import Settings
        from service.state import open_collections
        from training.encoders import load_encoder

        settings = Settings()
        if args.collections_dir:
            settings = settings.model_copy(update={"collections_dir": args.collections_dir})
        self.max_pixels = settings.max_image_pixels
        self.thumbnail_size = args.thumbnail_size if getattr(args, "thumbnails", False) else 0
        folder = Path(settings.collections_dir)
        faiss = settings.collections_backend == "faiss"
        if faiss and not create and not (folder / args.collection).is_dir():
            raise CollectionError(  # without opening (and so creating) the folder
                "collection_not_found", f"no collection named {args.collection!r} in {folder}"
            )
        self.store: CollectionBackend = open_collections(settings)
        self.encoder: Encoder = load_encoder(
            args.model or settings.model,
            args.pretrained or settings.pretrained,
            args.device or settings.device,
        )
        try:
            self.col: CollectionHandle = self.store.get(args.collection)
        except CollectionError as e:
            if e.code != "collection_not_found" or not create:
                raise
            self.store.create(args.collection, self.encoder.model_id, self.encoder.embed_dim)
            self.col = self.store.get(args.collection)
        if self.col.model_id != self.encoder.model_id:
            raise CollectionError(
                "model_mismatch",
                f"collection {self.col.name!r} holds embeddings of {self.col.model_id!r}, "
                f"but the model loaded is {self.encoder.model_id!r} (pass --model)",
            )

    def present(self, ids: list[str]) -> set[str]:
        return {i for i in ids if self.col.get(i) is not None}

    def load(self, path: Path) -> tuple[Any, Any]:
        """-> (the model's input tensor, the decoded image: large enough for the model and
        for a thumbnail)."""
        size = max(self.encoder.info.preprocess.size, self.thumbnail_size)
        _, image = read_image(path, self.max_pixels, size)
        return self.encoder.preprocess_image(image), image

    def upsert(self, files: list[_File], warn: Callable[[str], None]) -> int:
        import torch

        pixels: torch.Tensor = torch.stack([f.payload for f in files])
        vectors = self.encoder.encode_image_tensors(pixels).numpy()
        return self.col.upsert([f.id for f in files], vectors, [f.metadata for f in files])

    def search(
        self, text: str, k: int, where: dict[str, Any] | None
    ) -> list[tuple[str, float, Any]]:
        query = self.encoder.encode_texts([text]).numpy()
        return [(h.id, h.score, h.metadata) for h in self.col.search(query, k, where)[0]]

    @property
    def count(self) -> int:
        return self.col.count()

    def close(self) -> None:
        self.store.close()


class _Remote:
    """Over HTTP: a running server embeds and stores."""

    def __init__(self, args: argparse.Namespace, create: bool, url: str) -> None:
        from service.client import ContrastiveClient, ServiceError
        from service.settings import Settings

        self.name = args.collection
        # the key this machine's server is configured with, when none is given
        key = args.api_key or next(iter(Settings().api_keys), None)
        self.client: ContrastiveClient = ContrastiveClient(url, api_key=key)
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="index-check")
        try:
            self.client.describe_collection(self.name)
        except ServiceError as e:
            if e.code != "collection_not_found" or not create:
                self.close()
                raise
            self.client.create_collection(self.name)

    def _has(self, id_: str) -> bool:
        from service.client import ServiceError

        try:
            self.client.get_item(self.name, id_)
        except ServiceError as e:
            if e.code == "item_not_found":
                return False
            raise
        return True

    def present(self, ids: list[str]) -> set[str]:
        return {i for i, has in zip(ids, self.pool.map(self._has, ids), strict=True) if has}

    def load(self, path: Path) -> tuple[Any, Any]:
        """-> (the file's bytes, the decoded image). Decoded here too: a truncated file is
        skipped rather than failing a whole batch."""
        return read_image(path, sys.maxsize, 512)

    def upsert(self, files: list[_File], warn: Callable[[str], None]) -> int:
        added, group_bytes = 0, 0
        group: list[_File] = []
        for f in files:
            if group and group_bytes + f.size > REQUEST_BYTES:
                added += self._send(group, warn)
                group, group_bytes = [], 0
            group.append(f)
            group_bytes += f.size
        return added + (self._send(group, warn) if group else 0)

    def _send(self, files: list[_File], warn: Callable[[str], None]) -> int:
        from service.client import ServiceError

        try:
            return self.client.add(
                self.name,
                [f.id for f in files],
                images=[f.payload for f in files],
                metadata=[f.metadata for f in files],
            )
        except ServiceError as e:
            if e.code not in _SKIPPABLE:
                raise
            if len(files) == 1:
                warn(f"skipping {files[0].path}: the server refused it ({e})")
                return 0
        return sum(self._send([f], warn) for f in files)  # find the one(s) refused

    def search(
        self, text: str, k: int, where: dict[str, Any] | None
    ) -> list[tuple[str, float, Any]]:
        hits = self.client.search(self.name, text=text, k=k, where=where)
        return [(h.id, h.score, h.metadata) for h in hits]

    @property
    def count(self) -> int:
        return self.client.describe_collection(self.name).count

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()


def _open(args: argparse.Namespace, create: bool) -> _Local | _Remote:
    url = args.url or _running_server(args)
    return _Remote(args, create, url) if url else _Local(args, create)


def _running_server(args: argparse.Namespace) -> str | None:
    """The local server's URL when one answers and nothing asks for in-process, else None.
    Loading the model here takes seconds to a minute, and a FAISS folder is one process's:
    a server already running is the better place for the work."""
    if getattr(args, "local", False) or any(getattr(args, f, None) for f in LOCAL_FLAGS):
        return None
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
    from service.settings import Settings

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


# -- commands -------------------------------------------------------------------------------


def _warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def cmd_add(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.batch < 1:
        raise ValueError("--batch must be at least 1")
    if not 16 <= args.thumbnail_size <= 512:
        raise ValueError("--thumbnail-size must be between 16 and 512 pixels")
    files = collect(args.paths, _warn)
    target = _open(args, create=args.create or not args.url)
    thumb_size = args.thumbnail_size if args.thumbnails else None

    def load(path: Path) -> tuple[Any, str | None]:
        """-> (what target.upsert sends, the thumbnail or None); runs in the decode pool."""
        payload, image = target.load(path)
        if thumb_size is None:
            return payload, None
        from service.runtime.thumbnails import thumbnail_data_url

        return payload, thumbnail_data_url(image, thumb_size)

    added = present = not_images = 0
    workers = min(8, os.cpu_count() or 1)
    try:
        with (
            ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool,
            tqdm(total=len(files), unit="file", desc=args.collection, disable=None) as bar,
        ):
            for start in range(0, len(files), args.batch):
                chunk = files[start : start + args.batch]
                have = target.present([id_ for id_, _ in chunk])
                todo = [(id_, path) for id_, path in chunk if id_ not in have]
                present += len(chunk) - len(todo)
                batch: list[_File] = []
                for (id_, path), loaded in zip(
                    todo, pool.map(lambda item: _try(load, item[1]), todo), strict=True
                ):
                    if isinstance(loaded, NotAnImageError):
                        _warn(f"skipping {path}: {loaded}")
                        not_images += 1
                    else:
                        batch.append(_File(id_, path, path.stat().st_size, *loaded))
                if batch:
                    added += target.upsert(batch, _warn)
                bar.update(len(chunk))
        total = target.count
    finally:
        target.close()
    print(
        f"added {added} items to {args.collection!r} ({present} already present, "
        f"{not_images} not images); it holds {total} items"
    )
    return 0


def _try(fn: Callable[[Path], Any], path: Path) -> Any:
    try:
        return fn(path)
    except NotAnImageError as e:
        return e


def cmd_search(args: argparse.Namespace) -> int:
    where = None
    if args.where is not None:
        where = json.loads(args.where)
        if not isinstance(where, dict):
            raise ValueError('--where must be a JSON object, e.g. {"path": "a.png"}')
    if args.k < 1:
        raise ValueError("-k must be at least 1")
    target = _open(args, create=False)
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


def cmd_repair(args: argparse.Namespace) -> int:
    from service.index.embedded.repair import run_repair

    return run_repair(args.collection, args.collections_dir)


def _transfer_backend(args: argparse.Namespace, must_exist: bool) -> CollectionBackend:
    """The backend the settings select, in-process (as `_Local` opens it)."""
    from service.index.types import CollectionError
    from service.settings import Settings
    from service.state import open_collections

    settings = Settings()
    if args.collections_dir:
        settings = settings.model_copy(update={"collections_dir": args.collections_dir})
    folder = Path(settings.collections_dir)
    faiss = settings.collections_backend == "faiss"
    if faiss and must_exist and not (folder / args.collection).is_dir():
        raise CollectionError(  # without opening (and so creating) the folder
            "collection_not_found", f"no collection named {args.collection!r} in {folder}"
        )
    return open_collections(settings)


def _progress(verb: str) -> Callable[[int, int], None]:
    def say(done: int, expected: int) -> None:
        print(f"contrastive index {verb}: {done}/{expected} items", file=sys.stderr, flush=True)

    return say


def cmd_export(args: argparse.Namespace) -> int:
    from service.index.transfer import export_collection

    store = _transfer_backend(args, must_exist=True)
    try:
        header = export_collection(
            store, args.collection, Path(args.file), progress=_progress("export")
        )
    finally:
        store.close()
    print(
        f"exported {header.count} items of {args.collection!r} ({header.model_id}, "
        f"dim {header.dim}) to {args.file}"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from service.index.transfer import import_collection, read_file_header

    header = read_file_header(Path(args.file))  # a bad file is refused before opening
    store = _transfer_backend(args, must_exist=False)
    try:
        count = import_collection(
            store,
            args.collection,
            Path(args.file),
            force=args.force,
            progress=_progress("import"),
        )
    finally:
        store.close()
    print(
        f"imported {count} items into {args.collection!r} ({header.model_id}, "
        f"dim {header.dim}) from {args.file}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """`contrastive index add|search|repair|export|import` -> exit status: 1 with a message
    on stderr on error (repair: 2 while a server holds the folder); export and import: 2 on
    a usage or data error, 1 when the backend cannot be reached."""
    import httpx

    from service.client import ServiceError
    from service.index.transfer import TransferError
    from service.index.types import CollectionError
    from training.encoders import MissingCapabilityError

    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "add": cmd_add,
        "search": cmd_search,
        "repair": cmd_repair,
        "export": cmd_export,
        "import": cmd_import,
    }
    transfer = args.index_command in ("export", "import")
    status = 2 if transfer else 1
    try:
        return commands[args.index_command](args)
    except TransferError as e:
        message = str(e)
        if e.imported is not None:
            message += (
                f"; {e.imported} items were imported before it: collection "
                f"{args.collection!r} is incomplete (drop it, or import again with --force)"
            )
        print(f"contrastive index {args.index_command}: {message}", file=sys.stderr)
        cause = e.__cause__  # an upsert that failed part-way: the backend's error
        if isinstance(cause, CollectionError) and cause.code == "backend_unavailable":
            status = 1
    except (CollectionError, ServiceError) as e:
        print(f"contrastive index {args.index_command}: {e}", file=sys.stderr)
        if e.code == "backend_unavailable":
            status = 1
    except (OSError, ValueError, MissingCapabilityError, httpx.HTTPError) as e:
        # ValueError covers bad JSON, an unknown model and a missing CUDA device
        print(f"contrastive index {args.index_command}: {e}", file=sys.stderr)
    return status
