"""Export a collection to a file and import it back, on any backend: how a collection moves
from FAISS to Qdrant (or to another machine, or a new name).

The file is JSON Lines, UTF-8. The first line is a header:

    {"format": "contrastive-collection", "version": 1, "name": "photos",
     "model_id": "open_clip:ViT-B-32", "dim": 512, "index": {...IndexSpec...}, "count": 2}

then one line per item:

    {"id": "a.png", "metadata": {...}, "vector": "<base64 of dim float32, little-endian>",
     "source": "/photos/a.png"}

(`source` only for an item stored with one: what `contrastive index migrate` embeds the
item again from. A version without sources refuses such a line, naming the field.)

The vectors are the stored bytes, so a round trip through a file is exact. (A Qdrant
collection re-normalises every vector it is given, which can move the last bit of a float:
a FAISS -> Qdrant move keeps each vector to within about 1e-8, not bit for bit.)

An export is written to a temp file beside the target and renamed into place once complete
and fsynced: a target that exists is whole.

An import is all or nothing, in two passes over the file:

1. check: the header (a `dim` above MAX_DIM is refused before anything is sized by it),
   then every line, by the item rules every path into a collection obeys
   (contrastkit.service.index.items: the API's rules), and the count. This pass keeps a count and
   nothing else, and no line may be longer than one item can be, so memory stays bounded
   whatever the file. A bad line is a TransferError naming it; nothing has been created.
2. write: the backend's `create_filled` stores the items where no one sees them and lists
   the collection only once all are stored; should the storage fail, or the process be
   killed, no collection `name` is served (see `CollectionBackend.create_filled`).

A vector off unit length is scaled to it, as the API does with raw vectors (one within
1e-5 of unit length is kept bit for bit, so an export re-imports exactly).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard, get_args

import numpy as np

from contrastkit.service.index import items
from contrastkit.service.index.backend import Batch, CollectionBackend, iter_items
from contrastkit.service.index.fsutil import fsync_dir
from contrastkit.service.index.types import (
    MAX_DIM,
    CollectionError,
    IndexKind,
    IndexSpec,
    check_new,
)

FORMAT = "contrastive-collection"
VERSION = 1
BATCH = 1000  # items per upsert on import
PAGE = 1000  # items per scroll page on export
PROGRESS_EVERY = 10_000  # items between progress reports
FLOAT32_LE = np.dtype("<f4")
HEADER_MAX_BYTES = 1 << 20
# An item line holds its vector and JSON no larger than the API takes in one request (the
# default max_body_bytes): a longer line is refused before it is read whole.
ITEM_JSON_MAX_BYTES = 32 << 20
Progress = Callable[[int, int], None]  # (items done, items expected)


class TransferError(ValueError):
    """A file that is not a collection export, a bad line of one, or an import that could
    not be stored. Nothing was imported: an import is all or nothing.

    `line` is the 1-based line number (None: the file as a whole); line N > 1 holds item
    N - 1. A line refused by the item rules has the ItemError as its `__cause__`."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        if self.line is None:
            return self.message
        if self.line == 1:
            return f"line 1: {self.message}"
        return f"line {self.line} (item {self.line - 1}): {self.message}"


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
    source: str | None = None


# -- encoding -------------------------------------------------------------------------------


def encode_vector(vector: np.ndarray) -> str:
    """float32 [dim] -> base64 of its little-endian bytes."""
    return base64.b64encode(np.ascontiguousarray(vector, FLOAT32_LE).tobytes()).decode("ascii")


def decode_vector(text: object, dim: int) -> np.ndarray:
    """base64 of `dim` little-endian float32 -> float32 [dim] (native byte order, as stored:
    the item rules are applied by parse_record); ValueError naming what is wrong."""
    if not isinstance(text, str):
        raise ValueError("vector must be a base64 string")
    if len(text) != _base64_chars(dim):  # before decoding: a huge string is not copied
        raise ValueError(
            f"vector holds {len(text)} base64 characters; {dim} float32 take {_base64_chars(dim)}"
            f" ({4 * dim} bytes)"
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"vector is not valid base64 ({e})") from e
    if len(raw) != 4 * dim:
        raise ValueError(f"vector holds {len(raw)} bytes; {dim} float32 take {4 * dim}")
    return np.frombuffer(raw, FLOAT32_LE).astype(np.float32)


def _base64_chars(dim: int) -> int:
    """Characters of the padded base64 of `dim` float32."""
    return 4 * -(-4 * dim // 3)


def encode_record(
    id_: str, metadata: dict[str, Any], vector: np.ndarray, source: str | None = None
) -> str:
    """One item line (without its newline)."""
    line: dict[str, Any] = {"id": id_, "metadata": metadata, "vector": encode_vector(vector)}
    if source is not None:
        line["source"] = source
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
    if dim > MAX_DIM:  # before anything is sized by it
        raise TransferError(f'the header\'s "dim" {dim} is too large: at most {MAX_DIM}', 1)
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
    """One item line -> its Record, as it will be stored (the vector at unit length);
    ValueError naming what is wrong with the line, or ItemError for what the item rules
    refuse (the caller adds the line number)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    extra = set(obj) - {"id", "metadata", "vector", "source"}
    if extra:
        raise ValueError(f"unknown fields {sorted(extra)}")
    id_ = items.check_id(obj.get("id"), "id")
    metadata = items.check_metadata(obj.get("metadata"), "metadata")
    if "vector" not in obj:
        raise ValueError('no "vector"')
    vector = decode_vector(obj["vector"], dim)
    source = items.check_source(obj.get("source"), "source")
    return Record(id_, metadata, items.unit_rows(vector[None, :], lambda _: "vector")[0], source)


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
                f.write(encode_record(item.id, item.metadata, item.vector, item.source) + "\n")
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
    """The header of an export file (reads one line, of at most HEADER_MAX_BYTES)."""
    with open(path, "rb") as f:
        return parse_header(_decode(_read_line(f, HEADER_MAX_BYTES, 1), 1))


def _read_line(f: BinaryIO, limit: int, line_no: int) -> bytes:
    """The next line (b"" at the end); TransferError if it is longer than `limit` bytes,
    found out having read no more than that."""
    raw = f.readline(limit + 1)
    if len(raw) > limit:
        raise TransferError(f"the line is longer than {limit} bytes", line_no)
    return raw


def _decode(raw: bytes, line_no: int) -> str:
    """A line's bytes -> its text; TransferError if they are not UTF-8."""
    if line_no == 1 and not raw.strip():
        raise TransferError("not a collection export: the file is empty", 1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TransferError(f"not UTF-8 text ({e})", line_no) from e


def read_records(path: Path, header: Header) -> Iterator[Record]:
    """The items of an export file, checked by the item rules (parse_record), one line in
    memory at a time; TransferError naming the first bad line, or a count other than the
    header's."""
    limit = _base64_chars(header.dim) + ITEM_JSON_MAX_BYTES
    count = 0
    with open(path, "rb") as f:
        _read_line(f, HEADER_MAX_BYTES, 1)
        line_no = 1
        while raw := _read_line(f, limit, line_no + 1):
            line_no += 1
            if not raw.strip():
                if _only_blank_lines(f, limit):  # trailing blank lines are fine
                    break
                raise TransferError("an empty line inside the file", line_no)
            try:
                yield parse_record(_decode(raw, line_no), header.dim)
            except TransferError:
                raise
            except (ValueError, items.ItemError) as e:
                raise TransferError(getattr(e, "message", str(e)), line_no) from e
            count += 1
    if count != header.count:
        said = "ends after" if count < header.count else "holds"
        raise TransferError(
            f"the file {said} {count} items but its header says {header.count}"
            + (" (truncated?)" if count < header.count else "")
        )


def _only_blank_lines(f: BinaryIO, limit: int) -> bool:
    """Whether the rest of `f` is blank lines (read a bounded line at a time)."""
    while raw := f.read(limit):
        if raw.strip():
            return False
    return True


def check_file(
    path: Path, header: Header, progress: Progress | None = None, every: int = PROGRESS_EVERY
) -> int:
    """Pass 1 of an import: every line checked, nothing kept -> the items in the file.
    TransferError naming the first bad line."""
    checked = 0
    for _ in read_records(path, header):
        checked += 1
        if progress is not None and checked % every == 0:
            progress(checked, header.count)
    return checked


def _batches(
    path: Path, header: Header, size: int, progress: Progress | None, every: int
) -> Iterator[Batch]:
    """Pass 2 of an import: the file's items as upserts of `size` items (float32 [n, dim]
    unit vectors), `progress(done, expected)` about every `every` items."""
    chunk: list[Record] = []
    done = 0
    for record in read_records(path, header):
        chunk.append(record)
        if len(chunk) == size:
            yield _batch(chunk)
            done, chunk = done + size, []
            if progress is not None and done // every > (done - size) // every:
                progress(done, header.count)
    if chunk:
        yield _batch(chunk)


def _batch(chunk: list[Record]) -> Batch:
    return (
        [r.id for r in chunk],
        np.stack([r.vector for r in chunk]),
        [r.metadata for r in chunk],
        [r.source for r in chunk],
    )


def import_collection(
    backend: CollectionBackend,
    name: str,
    path: Path,
    force: bool = False,
    batch: int = BATCH,
    progress: Progress | None = None,
    every: int = PROGRESS_EVERY,
    checked: Progress | None = None,
) -> int:
    """Create collection `name` from an export file, all or nothing -> the items imported.

    The header, the name and the index spec are checked first; a collection `name` is
    refused ("collection_exists") unless `force`. Then the whole file is checked (pass 1,
    `checked(done, expected)` about every `every` items) before anything is created or
    dropped: a bad line, or a count other than the header's, raises TransferError and
    leaves the backend as it was. Only then does `force` drop the old collection, and the
    items are stored `batch` at a time through `create_filled` (pass 2, `progress`), which
    leaves no collection `name` should it fail (TransferError, the backend's error as its
    cause)."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    path = Path(path)
    header = read_file_header(path)
    check_new(name, header.dim, header.index)  # a bad name or spec: before reading on
    existing = {c.name for c in backend.list()} | set(backend.problems)
    if name in existing and not force:
        raise CollectionError(
            "collection_exists",
            f"collection {name!r} already exists (drop it first, or pass --force to replace it)",
        )
    count = check_file(path, header, checked, every)
    if name in existing:
        backend.drop(name)
    batches = _batches(path, header, batch, progress, every)
    try:
        backend.create_filled(name, header.model_id, header.dim, header.index, batches)
    except CollectionError as e:
        dropped = (
            f"; the collection {name!r} it was to replace was dropped" if name in existing else ""
        )
        raise TransferError(f"could not store the items ({e}){dropped}") from e
    return count
