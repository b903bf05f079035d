"""Export a collection to a file and import it back, on any backend: how a collection moves
from FAISS to Qdrant (or to another machine, or a new name).

The file is JSON Lines, UTF-8. The first line is a header:

    {"format": "contrastive-collection", "version": 1, "name": "photos",
     "model_id": "open_clip:ViT-B-32", "dim": 512, "index": {...IndexSpec...}, "count": 2}

then one line per item:

    {"id": "a.png", "metadata": {...}, "vector": "<base64 of dim float32, little-endian>"}

The vectors are the stored bytes, so a round trip through a file is exact. (A Qdrant
collection re-normalises every vector it is given, which can move the last bit of a float:
a FAISS -> Qdrant move keeps each vector to within about 1e-8, not bit for bit.)

An export is written to a temp file beside the target and renamed into place once complete
and fsynced: a target that exists is whole. An import checks the header before it creates
anything, then every line as it goes; a bad line stops it with `TransferError` naming the
line and how many items were stored, and the new collection is left as far as it got
(incomplete, and said so) for the user to drop or re-import with `force`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeGuard, get_args

import numpy as np

from service.index.backend import CollectionBackend, iter_items
from service.index.fsutil import fsync_dir
from service.index.types import MAX_ID_CHARS, CollectionError, IndexKind, IndexSpec

FORMAT = "contrastive-collection"
VERSION = 1
BATCH = 1000  # items per upsert on import
PAGE = 1000  # items per scroll page on export
PROGRESS_EVERY = 10_000  # items between progress reports
FLOAT32_LE = np.dtype("<f4")
Progress = Callable[[int, int], None]  # (items done, items expected)


class TransferError(ValueError):
    """A file that is not a collection export, or a bad line of one.

    `line` is the 1-based line number (None: the file as a whole); `imported` how many
    items were stored before the error (None: nothing was created)."""

    def __init__(self, message: str, line: int | None = None, imported: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line
        self.imported = imported

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return where + self.message


@dataclass(frozen=True)
class Header:
    """What an export's first line says about the collection."""

    name: str
    model_id: str
    dim: int
    index: IndexSpec
    count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "model_id": self.model_id,
            "dim": self.dim,
            "index": self.index.to_dict(),
            "count": self.count,
        }


@dataclass(frozen=True)
class Record:
    """One item line, decoded."""

    id: str
    metadata: dict[str, Any]
    vector: np.ndarray  # float32 [dim]


# -- encoding -------------------------------------------------------------------------------


def encode_vector(vector: np.ndarray) -> str:
    """float32 [dim] -> base64 of its little-endian bytes."""
    return base64.b64encode(np.ascontiguousarray(vector, FLOAT32_LE).tobytes()).decode("ascii")


def decode_vector(text: object, dim: int) -> np.ndarray:
    """base64 of `dim` little-endian float32 -> float32 [dim] (native byte order); ValueError
    naming what is wrong."""
    if not isinstance(text, str):
        raise ValueError('"vector" must be a base64 string')
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f'"vector" is not valid base64 ({e})') from e
    if len(raw) != 4 * dim:
        raise ValueError(f'"vector" holds {len(raw)} bytes; {dim} float32 take {4 * dim}')
    vector = np.frombuffer(raw, FLOAT32_LE).astype(np.float32)
    if not np.isfinite(vector).all():
        raise ValueError('"vector" holds a NaN or an infinity')
    return vector


def encode_record(id_: str, metadata: dict[str, Any], vector: np.ndarray) -> str:
    """One item line (without its newline)."""
    line = {"id": id_, "metadata": metadata, "vector": encode_vector(vector)}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def parse_header(text: str) -> Header:
    """The first line of a file -> its Header; TransferError (line 1) if it is not ours."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TransferError(f"not a collection export: the header is not JSON ({e})", 1) from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise TransferError(f'not a collection export: the header has no "format": "{FORMAT}"', 1)
    if obj.get("version") != VERSION:
        raise TransferError(
            f"export format version {obj.get('version')!r} is not supported (this version "
            f"reads {VERSION})",
            1,
        )
    name, model_id, dim = obj.get("name"), obj.get("model_id"), obj.get("dim")
    index, count = obj.get("index"), obj.get("count")
    if not isinstance(name, str) or not isinstance(model_id, str) or not model_id:
        raise TransferError('the header needs "name" and "model_id" strings', 1)
    if not _is_int(dim) or dim < 1:
        raise TransferError(f'the header\'s "dim" must be a positive integer, not {dim!r}', 1)
    if not _is_int(count) or count < 0:
        raise TransferError(f'the header\'s "count" must be an integer >= 0, not {count!r}', 1)
    if not isinstance(index, dict):
        raise TransferError('the header\'s "index" must be an object (an index spec)', 1)
    try:
        spec = IndexSpec.from_dict(index)
    except TypeError as e:
        raise TransferError(f'the header\'s "index" is not an index spec ({e})', 1) from e
    if spec.kind not in get_args(IndexKind):
        raise TransferError(
            f"the header's index kind {spec.kind!r} is not one this version knows", 1
        )
    return Header(name=name, model_id=model_id, dim=dim, index=spec, count=count)


def parse_record(text: str, dim: int) -> Record:
    """One item line -> its Record; ValueError naming what is wrong (the caller adds the line
    number)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    extra = set(obj) - {"id", "metadata", "vector"}
    if extra:
        raise ValueError(f"unknown fields {sorted(extra)}")
    id_, metadata = obj.get("id"), obj.get("metadata", {})
    if not isinstance(id_, str) or not 1 <= len(id_) <= MAX_ID_CHARS:
        raise ValueError(f'"id" must be a string of 1-{MAX_ID_CHARS} characters')
    if not isinstance(metadata, dict):
        raise ValueError('"metadata" must be a JSON object')
    if "vector" not in obj:
        raise ValueError('no "vector"')
    return Record(id_, metadata, decode_vector(obj["vector"], dim))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# -- export ---------------------------------------------------------------------------------


def export_collection(
    backend: CollectionBackend,
    name: str,
    path: Path,
    progress: Progress | None = None,
    every: int = PROGRESS_EVERY,
) -> Header:
    """Write collection `name` to `path` (replacing it) -> the header written.

    Written to a temp file beside `path`, fsynced and renamed: `path` never holds a part.
    `progress(done, expected)` is called every `every` items. If the collection changes
    while it is read (a server writing to Qdrant meanwhile), the header's count is
    corrected to the items actually written."""
    handle = backend.get(name)
    info = handle.info()
    header = Header(name, info.model_id, info.dim, info.index, info.count)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(_header_line(header))
            written = 0
            for item in iter_items(handle, PAGE, vectors=True):
                if item.vector is None:  # iter_items(vectors=True) always fills it
                    raise CollectionError(
                        "storage_error", f"item {item.id!r} came without its vector"
                    )
                f.write(encode_record(item.id, item.metadata, item.vector) + "\n")
                written += 1
                if progress is not None and written % every == 0:
                    progress(written, header.count)
            f.flush()
            os.fsync(f.fileno())
        if written != header.count:  # changed meanwhile: rewrite with the true count
            header = replace(header, count=written)
            _rewrite_header(tmp, header)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return header


def _header_line(header: Header) -> str:
    return json.dumps(header.to_json(), ensure_ascii=False) + "\n"


def _rewrite_header(tmp: Path, header: Header) -> None:
    """Replace the first line of `tmp` (rare: the collection changed during the export)."""
    fixed = tmp.with_name(tmp.name + ".fix")
    try:
        with (
            open(tmp, encoding="utf-8") as src,
            open(fixed, "w", encoding="utf-8", newline="\n") as dst,
        ):
            src.readline()
            dst.write(_header_line(header))
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(fixed, tmp)
    finally:
        fixed.unlink(missing_ok=True)


# -- import ---------------------------------------------------------------------------------


def read_file_header(path: Path) -> Header:
    """The header of an export file (reads one line)."""
    with open(path, "rb") as f:
        return parse_header(_decode(f.readline(), 1, None))


def _decode(raw: bytes, line_no: int, imported: int | None) -> str:
    """A line's bytes -> its text; TransferError if they are not UTF-8."""
    if line_no == 1 and not raw.strip():
        raise TransferError("not a collection export: the file is empty", 1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TransferError(f"not UTF-8 text ({e})", line_no, imported) from e


def import_collection(
    backend: CollectionBackend,
    name: str,
    path: Path,
    force: bool = False,
    batch: int = BATCH,
    progress: Progress | None = None,
    every: int = PROGRESS_EVERY,
) -> int:
    """Create collection `name` from an export file -> the items imported.

    The header is checked before anything is created; a collection of that name is refused
    ("collection_exists") unless `force`, which drops it first. Items are upserted `batch`
    at a time; `progress(done, expected)` is called about every `every` items. A bad line,
    a file that ends before its header's count, or a failed upsert raises TransferError
    with `imported` set (and `line` for a bad line): the collection then holds that many
    items and is incomplete."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    with open(path, "rb") as f:
        header = parse_header(_decode(f.readline(), 1, None))
        existing = {c.name for c in backend.list()} | set(backend.problems)
        if name in existing:
            if not force:
                raise CollectionError(
                    "collection_exists",
                    f"collection {name!r} already exists (drop it first, or pass --force to "
                    "replace it)",
                )
            backend.drop(name)
        backend.create(name, header.model_id, header.dim, header.index)
        handle = backend.get(name)
        imported = 0
        chunk: list[Record] = []

        def flush() -> None:
            nonlocal imported
            if not chunk:
                return
            try:
                vectors = np.stack([r.vector for r in chunk])
                handle.upsert([r.id for r in chunk], vectors, [r.metadata for r in chunk])
            except CollectionError as e:
                raise TransferError(f"storing items failed: {e}", None, imported) from e
            before = imported
            imported += len(chunk)
            chunk.clear()
            if progress is not None and imported // every > before // every:
                progress(imported, header.count)

        line_no = 1
        while raw := f.readline():
            line_no += 1
            if not raw.strip():
                if all(not rest.strip() for rest in f):  # trailing blank lines are fine
                    break
                flush()
                raise TransferError("an empty line inside the file", line_no, imported)
            try:
                chunk.append(parse_record(_decode(raw, line_no, imported), header.dim))
            except ValueError as e:  # TransferError included
                flush()  # the good lines before it are stored: the count said is exact
                raise TransferError(getattr(e, "message", str(e)), line_no, imported) from e
            if len(chunk) >= batch:
                flush()
        flush()
    if imported != header.count:
        raise TransferError(
            f"the file ends after {imported} items but its header says {header.count} (truncated?)",
            None,
            imported,
        )
    return imported
