"""Tar shards in the webdataset layout (`--data shards:DIR` or `shards:GLOB`), read in place.

A shard is an uncompressed .tar; a sample is the members sharing a key (the path up to
the first '.' of the file name): one image (.jpg, .png, ...), and optionally a caption
(.txt or .caption) and an integer class (.cls). For example `000017.jpg`, `000017.txt`.

Nothing is unpacked and no image is held in memory: opening the data reads only the tar
headers (the member offsets), and each image is read at its offset when a batch needs it.
That random access keeps the data contract of training.data.base: the batch order is the
seeded permutation of every sample, so exact resume and multi-GPU batching work as for
any other set. The index (three integers a sample, plus its caption) is what stays in
memory: about 100 bytes a sample, so 10 million samples take about a gigabyte.

Compressed shards (.tar.gz) cannot be read at an offset: they are refused with a hint.
"""

from __future__ import annotations

import glob
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from training.data.base import DataError
from training.data.files import IMAGE_EXTENSIONS

CAPTION_EXTENSIONS = (".txt", ".caption")


@dataclass
class ShardScan:
    """What the shards hold: one row per sample with an image, in shard then tar order."""

    shards: list[str]
    where: list[tuple[int, int, int]] = field(default_factory=list)  # (shard, offset, size)
    keys: list[str] = field(default_factory=list)
    captions: list[str | None] = field(default_factory=list)
    classes: list[int | None] = field(default_factory=list)
    without_image: int = 0  # keys that had no image member (skipped)

    @property
    def labels(self) -> Tensor | None:
        """int64 [N] when every sample has a .cls, else None."""
        if not self.classes or any(c is None for c in self.classes):
            return None
        return torch.tensor(self.classes, dtype=torch.long)

    @property
    def texts(self) -> list[str] | None:
        """The captions when every sample has one, else None."""
        if not self.captions or any(c is None for c in self.captions):
            return None
        return [c for c in self.captions if c is not None]


def shard_paths(spec: str) -> list[str]:
    """A folder (its *.tar files) or a glob pattern -> the shard paths, sorted."""
    path = Path(spec).expanduser()
    found = sorted(glob.glob(str(path / "*.tar"))) if path.is_dir() else sorted(glob.glob(spec))
    compressed = [p for p in found if not p.endswith(".tar")]
    if compressed:
        raise DataError(
            f"shards must be uncompressed .tar files (read at an offset); {compressed[0]} is "
            "not: decompress it (e.g. `gunzip`), JPEG/PNG members are compressed already"
        )
    if not found:
        raise DataError(f"--data shards:{spec}: no .tar shards found")
    return found


def scan_shards(paths: list[str]) -> ShardScan:
    """Read the tar headers of every shard (and the small caption/class members)."""
    scan = ShardScan(shards=paths)
    for s, path in enumerate(paths):
        try:
            with tarfile.open(path, "r:") as tar:
                _scan_one(tar, s, scan)
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"shard {path} is not a readable tar file ({e})") from e
    if not scan.where:
        raise DataError(f"no images in the {len(paths)} shards (members like KEY.jpg)")
    return scan


def _scan_one(tar: tarfile.TarFile, shard: int, scan: ShardScan) -> None:
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    for member in tar:
        if not member.isfile():
            continue
        folder, _, name = member.name.rpartition("/")
        stem, dot, ext = name.partition(".")
        key = f"{folder}/{stem}" if folder else stem
        samples.setdefault(key, {})[f"{dot}{ext}".lower()] = member
    for key, parts in samples.items():
        image = next((m for ext, m in parts.items() if ext in IMAGE_EXTENSIONS), None)
        if image is None:
            scan.without_image += 1
            continue
        scan.where.append((shard, image.offset_data, image.size))
        scan.keys.append(key)
        caption = next((parts[e] for e in CAPTION_EXTENSIONS if e in parts), None)
        scan.captions.append(_text(tar, caption).strip() if caption is not None else None)
        cls = parts.get(".cls")
        scan.classes.append(_class(tar, cls, key) if cls is not None else None)


def _text(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    f = tar.extractfile(member)
    assert f is not None  # a regular file
    return f.read().decode("utf-8", errors="replace")


def _class(tar: tarfile.TarFile, member: tarfile.TarInfo, key: str) -> int:
    text = _text(tar, member).strip()
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"sample {key}: its .cls holds {text[:40]!r}, not an integer") from None
    if value < 0:
        raise DataError(f"sample {key}: class {value} is negative")
    return value


class ShardSource:
    """Random access to the images of a ShardScan (an ImageSource; pickles for workers:
    it holds paths and offsets, and opens the shard at each read)."""

    def __init__(self, scan: ShardScan) -> None:
        self.shards, self.where, self.keys = scan.shards, scan.where, scan.keys

    def __len__(self) -> int:
        return len(self.where)

    def open(self, index: int, size: int) -> Image.Image:
        shard, offset, length = self.where[index]
        with open(self.shards[shard], "rb") as f:
            f.seek(offset)
            data = f.read(length)
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (size, size))  # JPEGs decode at a reduced scale when they can
        image.load()
        return image

    def name(self, index: int) -> str:
        return f"{self.shards[self.where[index][0]]}:{self.keys[index]}"
