"""collection.json: what a collection's data is (name, model, dimension, index spec), sealed
by a checksum of its own content.

Nothing else in the folder says which model made the vectors or how to index them, and
log records do not carry the dimension. An edited or damaged collection.json used to be
served as `ok`: a dim changed from 8 to 4, with only log records on disk, served every
vector cut in half; an unknown index kind was served as flat. The rules now:

- Sealed (format_version 2, written by create): "sha256" is the hex sha256 of the
  canonical JSON (sorted keys, no whitespace, ASCII) of every other field. It is taken
  over the parsed values, not the file's bytes, so re-indenting or reordering the file
  passes and any changed value fails. It catches hand edits, restores that mix files up
  and bit rot; it is no signature (anyone can recompute it).
- Unsealed (format_version 1, written before the checksum): accepted, since refusing it
  would take every existing collection out of service on an upgrade. Like every file it
  is checked against the data on each open: its dimension against the snapshots'
  headers (recovery) and against each logged upsert's vector bytes (wal.Record.decode).
  An open never rewrites it (a server writes no metadata of its own accord);
  `contrastive index repair` seals it once those checks pass. A format_version 2 file
  without "sha256" is refused: its checksum was removed.
- Sealed or not, the file must name its own folder, give a known index kind and a spec
  that check_new accepts; a format_version this code does not know is refused.

Whatever is wrong raises MetaError naming collection.json and the fault: the collection is
refused (collection_corrupt), its files left as they are.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from contrastkit.service.index.embedded.recovery import DATA_FILES, META, MetaError
from contrastkit.service.index.embedded.staging import PREFIX as STAGING_PREFIX
from contrastkit.service.index.fsutil import atomic_write
from contrastkit.service.index.types import INDEX_KINDS, CollectionError, IndexSpec, check_new

FORMAT_VERSION = 2  # sealed by "sha256"
UNSEALED_VERSION = 1  # written before the checksum: accepted, checked against the data
CHECKSUM = "sha256"


class MetaMissingError(MetaError):
    """The folder holds a collection's data files but no collection.json."""


@dataclass(frozen=True)
class CollectionMeta:
    """What collection.json says; `sealed`: whether it carried a checksum (that held)."""

    name: str
    model_id: str
    dim: int
    spec: IndexSpec
    created_at: str
    sealed: bool = True

    def fields(self) -> dict[str, Any]:
        """The file's fields, checksum aside, as create writes them (format_version 2)."""
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "model_id": self.model_id,
            "dim": self.dim,
            "index": self.spec.to_dict(),
            "created_at": self.created_at,
        }


def checksum(content: dict[str, Any]) -> str:
    """The hex sha256 of `content`'s canonical JSON (ValueError: it holds NaN or infinity,
    which nothing we write does)."""
    canonical = json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode_meta(meta: CollectionMeta) -> bytes:
    """collection.json's bytes: the fields and their checksum, indented for people."""
    content = meta.fields()
    return json.dumps({**content, CHECKSUM: checksum(content)}, indent=2).encode()


def write_meta(folder: Path, meta: CollectionMeta) -> None:
    """Write `folder`/collection.json sealed, atomically (CollectionError on a disk error)."""
    atomic_write(folder / META, encode_meta(meta))


def read_meta(folder: Path) -> CollectionMeta:
    """Read and check `folder`/collection.json -> what it says; MetaError if it must not be
    trusted (MetaMissingError: absent). Checks the checksum when there is one, then the
    fields, whether or not there is one (see the module docstring)."""
    content = _load(folder)
    sealed = _check_seal(content)
    try:
        name, model_id, dim = content["name"], content["model_id"], content["dim"]
        created_at, index = content["created_at"], content["index"]
    except KeyError as e:
        raise MetaError(f"{META} has no {e} field") from None
    if not isinstance(name, str) or not isinstance(model_id, str) or not model_id:
        raise MetaError(f'{META}: "name" and "model_id" must be non-empty strings')
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise MetaError(f'{META}: "dim" must be an integer, not {dim!r}')
    if not isinstance(created_at, str):
        raise MetaError(f'{META}: "created_at" must be a string')
    if not _named_by(folder, name):  # the store finds a collection, and deletes it, by its folder
        raise MetaError(f"{META} names the collection {name!r}, but its folder is {folder.name!r}")
    spec = _spec(index)
    try:
        check_new(name, dim, spec)
    except CollectionError as e:
        raise MetaError(f"{META}: {e.message}") from None
    return CollectionMeta(name, model_id, dim, spec, created_at, sealed)


def _load(folder: Path) -> dict[str, Any]:
    """collection.json parsed: a JSON object, else MetaError (MetaMissingError: absent)."""
    try:
        raw = (folder / META).read_bytes()
    except FileNotFoundError:
        present = [n for n in DATA_FILES if (folder / n).exists()]
        held = f" (the folder holds {', '.join(present)})" if present else ""
        raise MetaMissingError(f"{META} is missing{held}") from None
    except OSError as e:
        raise MetaError(f"{META} cannot be read ({e})") from None
    try:
        content = json.loads(raw)
    except ValueError as e:  # UnicodeDecodeError is a ValueError too
        raise MetaError(f"{META} is not valid JSON ({e})") from None
    if not isinstance(content, dict):
        raise MetaError(f"{META} holds no JSON object")
    return content


def _check_seal(content: dict[str, Any]) -> bool:
    """Pop and check the checksum -> whether there was one; MetaError if it fails, if a
    version that needs one lacks it, or if the version is unknown."""
    version = content.get("format_version")
    # type(...) is int: True and 1.0 compare equal to 1, but no version of ours wrote them
    if type(version) is not int or version not in (UNSEALED_VERSION, FORMAT_VERSION):
        raise MetaError(
            f"{META} has format_version {version!r}; this version reads "
            f"{UNSEALED_VERSION} and {FORMAT_VERSION}"
        )
    digest = content.pop(CHECKSUM, None)
    if digest is None:
        if version == FORMAT_VERSION:
            raise MetaError(
                f'{META} has no "{CHECKSUM}", which its format_version {FORMAT_VERSION} '
                "requires: it was edited"
            )
        return False
    try:
        expected = checksum(content)
    except ValueError:
        expected = ""
    if digest != expected:
        raise MetaError(f"{META} fails its checksum: it was edited or damaged after it was written")
    return True


def _spec(index: Any) -> IndexSpec:
    """The "index" field -> its IndexSpec; MetaError for an unknown kind or a parameter
    of the wrong type (keys this version does not know are ignored, as IndexSpec does:
    they were parameters of older versions)."""
    if not isinstance(index, dict):
        raise MetaError(f'{META}: "index" must be an object, not {index!r}')
    kind = index.get("kind")
    if kind not in INDEX_KINDS:
        raise MetaError(
            f"{META} gives an unknown index kind {kind!r} (this version knows "
            f"{', '.join(INDEX_KINDS)})"
        )
    for f in fields(IndexSpec):
        value = index.get(f.name)
        if f.name == "kind" or f.name not in index or (value is None and f.default is None):
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise MetaError(f"{META}: index parameter {f.name!r} must be an integer, not {value!r}")
    return IndexSpec.from_dict(index)


def _named_by(folder: Path, name: str) -> bool:
    """Whether `folder` is collection `name`'s: `root/NAME`, or the staging folder an import
    fills before renaming it to that (staging.staging_folder)."""
    if folder.name == name:
        return True
    head, _, tail = folder.name.rpartition("-")
    return head == f"{STAGING_PREFIX}{name}" and len(tail) == 12
