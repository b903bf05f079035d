"""Tar shards in the webdataset layout (`--data shards:DIR` or `shards:GLOB`), read in place.

A shard is an uncompressed .tar; a sample is the members sharing a key (the path up to
the first '.' of the file name): one image (.jpg, .png, ...), and optionally a caption
(.txt or .caption) and an integer class (.cls). For example `000017.jpg`, `000017.txt`.

Nothing is unpacked and no image is held in memory: opening the data reads only the tar
headers (the member offsets), and each image is read at its offset when a batch needs it.
That random access keeps the data contract of contrastkit.training.data.base: the batch order is the
seeded permutation of every sample, so exact resume and multi-GPU batching work as for
any other set. The index (three integers a sample, plus its caption) is what stays in
memory: about 100 bytes a sample, so 10 million samples take about a gigabyte.

Compressed shards (.tar.gz) cannot be read at an offset: they are refused with a hint.

Bad samples: a .cls that is not a class id stops the run (DataError naming the shard and
member); oversized image or caption members skip their sample, counted in
ShardScan.skipped; a shard cut short is read up to the cut, with a warning (_scan_one).
"""

from __future__ import annotations

import glob
import io
import os
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from contrastkit.training.data.base import DataError
from contrastkit.training.data.files import IMAGE_EXTENSIONS, check_pixels

CAPTION_EXTENSIONS = (".txt", ".caption")

# Limits on what one sample may hold. A value over them is not a photo, caption or class
# id but a corrupt or hostile member, and each one sizes memory: an image member is read
# whole by a decode worker, a caption stays in the index for the whole run.
MAX_IMAGE_BYTES = 64 * 2**20  # larger image members are skipped (and counted)
MAX_CAPTION_BYTES = 64 * 2**10  # longer captions skip their sample (text encoders keep ~77 tokens)
MAX_CLS_BYTES = 32  # a .cls holds one decimal integer; anything longer is refused
MAX_CLASS_ID = 2**31 - 1  # class ids must fit an int32; larger ones are refused

# Reasons a sample is skipped while the shards are scanned (keys of ShardScan.skipped).
SKIP_NO_IMAGE = "no image member"
SKIP_BIG_IMAGE = f"image member over {MAX_IMAGE_BYTES // 2**20} MiB"
SKIP_BIG_CAPTION = f"caption over {MAX_CAPTION_BYTES // 2**10} KiB"
SKIP_CUT = "cut off by the end of a truncated shard"


@dataclass
class ShardScan:
    """What the shards hold: one row per sample with an image, in shard then tar order.

    where: (shard index, data offset, size in bytes) a sample; keys, captions, classes:
    one entry a sample. skipped: reason -> samples left out (see SKIP_*); example: the
    first skipped sample per reason, as 'shard:key'. truncated: one line per shard that
    ended before its end-of-archive marker.
    """

    shards: list[str]
    where: list[tuple[int, int, int]] = field(default_factory=list)  # (shard, offset, size)
    keys: list[str] = field(default_factory=list)
    captions: list[str | None] = field(default_factory=list)
    classes: list[int | None] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    example: dict[str, str] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)

    @property
    def without_image(self) -> int:
        """Keys that had no image member (skipped)."""
        return self.skipped.get(SKIP_NO_IMAGE, 0)

    def skip(self, reason: str, shard: int, key: str) -> None:
        """Count one sample left out for `reason`."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.example.setdefault(reason, f"{self.shards[shard]}:{key}")

    @property
    def labels(self) -> Tensor | None:
        """int64 [N] class ids as the .cls files hold them, when every sample has a .cls,
        else None. The ids are in 0..MAX_CLASS_ID but need not be dense."""
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
    """Read the tar headers of every shard (and the small caption/class members).

    A bad class (.cls) stops the scan with a DataError naming the shard and member;
    oversized members skip their sample (counted in `skipped`); a shard cut short is
    read as far as it goes, with a warning (see _scan_one).
    """
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


def _members(
    tar: tarfile.TarFile, path: str
) -> tuple[dict[str, dict[str, tarfile.TarInfo]], int, str | None]:
    """The shard's regular files grouped by sample key, how many members were read, and
    why the shard ended early (None when it reached its end-of-archive marker)."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    count, cut = 0, None
    try:
        for member in tar:
            count += 1
            if not member.isfile():
                continue
            folder, _, name = member.name.rpartition("/")
            stem, dot, ext = name.partition(".")
            key = f"{folder}/{stem}" if folder else stem
            samples.setdefault(key, {})[f"{dot}{ext}".lower()] = member
    except tarfile.ReadError as e:
        # tarfile raises here when a member's data runs past the end of the file (or
        # a later header is corrupt); what came before is intact.
        cut = str(e)
    if cut is None:
        # tarfile also stops quietly at a missing, partial or garbled header; only a
        # zero block is the real end of an archive.
        fileobj = tar.fileobj
        assert fileobj is not None
        fileobj.seek(tar.offset)
        block = fileobj.read(tarfile.BLOCKSIZE)
        if block != bytes(tarfile.BLOCKSIZE):
            cut = "no end-of-archive marker" if not block else "a damaged header"
    return samples, count, cut


def _scan_one(tar: tarfile.TarFile, shard: int, scan: ShardScan) -> None:
    path = scan.shards[shard]
    size = os.path.getsize(path)
    samples, count, cut = _members(tar, path)
    last = next(reversed(samples), None) if cut is not None else None
    kept = 0
    for key, parts in samples.items():
        # A sample's members lie together, so only the last one of a cut shard can miss
        # some (its .cls or caption may have been after the cut).
        if key == last or any(m.offset_data + m.size > size for m in parts.values()):
            scan.skip(SKIP_CUT, shard, key)
            continue
        image = next((m for ext, m in parts.items() if ext in IMAGE_EXTENSIONS), None)
        if image is None:
            scan.skip(SKIP_NO_IMAGE, shard, key)
            continue
        if image.size > MAX_IMAGE_BYTES:
            scan.skip(SKIP_BIG_IMAGE, shard, key)
            continue
        caption = next((parts[e] for e in CAPTION_EXTENSIONS if e in parts), None)
        if caption is not None and caption.size > MAX_CAPTION_BYTES:
            scan.skip(SKIP_BIG_CAPTION, shard, key)
            continue
        cls = parts.get(".cls")
        label = _class(tar, cls, path) if cls is not None else None
        scan.where.append((shard, image.offset_data, image.size))
        scan.keys.append(key)
        scan.captions.append(_text(tar, caption).strip() if caption is not None else None)
        scan.classes.append(label)
        kept += 1
    if cut is not None:
        # Warn rather than stop: the samples before the cut are whole (each was checked
        # against the file size), and one shard cut by an interrupted copy should not
        # end a run over many. The line names the shard so it can be copied again.
        line = (
            f"shard {path} is truncated ({cut}) at byte {size}: read {count} members, "
            f"kept {kept} whole samples; copy the shard again to use the rest"
        )
        scan.truncated.append(line)
        warnings.warn(line, stacklevel=3)


def _text(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int = MAX_CAPTION_BYTES) -> str:
    """The member's first `limit` bytes as text (callers check the size first)."""
    f = tar.extractfile(member)
    assert f is not None  # a regular file
    return f.read(limit).decode("utf-8", errors="replace")


def _class(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> int:
    """The class id a .cls member holds, in 0..MAX_CLASS_ID.

    A bad one stops the run instead of skipping the sample: labels define the classes
    a supervised method trains on, and a corrupt one usually means a labelling step
    went wrong for many samples; skipping them would train on a quietly different set.
    """
    where = f"shard {path}, member {member.name}"
    if member.size > MAX_CLS_BYTES:
        raise DataError(
            f"{where}: a .cls of {member.size} bytes is not a class id (one integer, "
            f"at most {MAX_CLS_BYTES} bytes)"
        )
    text = _text(tar, member, MAX_CLS_BYTES).strip()
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"{where}: its .cls holds {text[:40]!r}, not an integer class") from None
    if not 0 <= value <= MAX_CLASS_ID:
        raise DataError(f"{where}: class {value} is outside 0..{MAX_CLASS_ID}")
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
        check_pixels(image)
        image.load()
        return image

    def name(self, index: int) -> str:
        return f"{self.shards[self.where[index][0]]}:{self.keys[index]}"
