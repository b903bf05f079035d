"""Image files on disk: decoding, folder layouts and image-caption lists."""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from contrastkit.training.data.base import DataError
from contrastkit.training.data.skips import describe_skips
from contrastkit.training.encoders.preprocess import clamp_aspect, ensure_rgb

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)
IMAGE_COLUMNS = ("image", "filepath", "path")
TEXT_COLUMNS = ("caption", "text", "title")
SPLIT_NAMES = ("val", "test", "valid", "validation")
# Pixels an image may decode to (after JPEG draft scaling): PIL's own default bomb limit,
# fixed here because importing the service sets PIL's to None. A larger image would take
# hundreds of MB in a decode worker; it is skipped as unreadable (and counted) instead.
MAX_DECODE_PIXELS = 89_478_485


def load_size(image_size: int) -> int:
    """Decoded side length: 8/7 of the training size (the 256/224 convention)."""
    return round(image_size * 8 / 7)


def decode(image: Image.Image, size: int, crop: int) -> Tensor:
    """PIL image -> RGB, shorter side resized to `size`, centre `crop` -> uint8 [3, crop, crop]."""
    # Upright RGB, alpha on white, extreme strips pre-cropped: the service's rules, so
    # training sees photos the way the served encoder will.
    image = clamp_aspect(ensure_rgb(image))
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - crop) // 2, (new_h - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def check_pixels(image: Image.Image) -> None:
    """Refuse (ValueError) an opened, not yet loaded image that would decode to more than
    MAX_DECODE_PIXELS; the header gives the size, so nothing is allocated first."""
    w, h = image.size
    if w * h > MAX_DECODE_PIXELS:
        raise ValueError(f"{w}x{h} pixels is over the {MAX_DECODE_PIXELS} pixel limit")


def open_image(path: str, size: int) -> Image.Image:
    """Open and fully load an image; JPEGs decode at a reduced scale when that still
    leaves >= `size` pixels (draft mode), which makes large photos several times cheaper."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        check_pixels(image)
        image.load()
        # Closing the file frees a loaded image's pixels too; a copy outlives it.
        return image.copy()


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(folder: Path) -> list[Path]:
    """Every image file under `folder` (recursively), in sorted path order."""
    return sorted(p for p in folder.rglob("*") if is_image(p))


@dataclass
class FolderScan:
    """paths: image files; labels: int64 [N] indexing `classes`, or None (unlabelled)."""

    paths: list[str]
    labels: Tensor | None
    classes: list[str] | None


def scan_folder(folder: Path, classes: list[str] | None = None) -> FolderScan:
    """Images under `folder`, recursively. When its immediate subfolders hold images and
    no image sits directly in `folder`, each subfolder is a class; otherwise unlabelled.

    `classes`: use this class list (a val/ folder follows train/'s classes).
    """
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    per_class = {d.name: list_images(d) for d in sorted(folder.iterdir()) if d.is_dir()}
    per_class = {name: files for name, files in per_class.items() if files}
    if not per_class or any(is_image(p) for p in folder.iterdir()):
        found = list_images(folder)
        if not found:
            raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}")
        return FolderScan([str(p) for p in found], None, None)
    classes = classes if classes is not None else sorted(per_class)
    unknown = sorted(set(per_class) - set(classes))
    if unknown:
        raise DataError(f"{folder}: class folders {unknown} are not among {classes}")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = per_class.get(name, [])
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    return FolderScan(paths, torch.tensor(labels, dtype=torch.int64), classes)


def split_dirs(folder: Path) -> tuple[Path, Path | None]:
    """(training folder, held-out folder or None): DIR/train and DIR/val (or test, ...)
    when present; otherwise DIR itself and no held-out folder."""
    train = folder / "train"
    if not train.is_dir():
        return folder, None
    held = [folder / name for name in SPLIT_NAMES if (folder / name).is_dir()]
    return train, (held[0] if held else None)


def _pick(columns: list[str], wanted: tuple[str, ...], file: Path) -> str:
    for name in wanted:
        if name in columns:
            return name
    raise DataError(f"{file}: no column named one of {list(wanted)} (found {columns})")


# Reasons a pairs row is left out (keys of PairScan.skipped).
SKIP_MISSING_FILE = "missing file"
SKIP_EMPTY_CAPTION = "empty caption"

Row = tuple[int, dict[str, object]]  # (line number in the file, column -> value)


def _read_rows(file: Path) -> tuple[list[str], list[Row]]:
    """(columns, rows) of a JSONL file (the first object's keys) or a CSV with a header.

    A CSV row's absent cells are dropped from its dict, so a row too short to reach a
    column lacks it, as a JSON object without the key does.
    """
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read pairs file {file}: {e}") from e
    if file.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows: list[Row] = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((n, dict(json.loads(line))))
                except (json.JSONDecodeError, TypeError, ValueError) as e:
                    raise DataError(f"{file}:{n}: not a JSON object: {e}") from e
        return (list(rows[0][1]) if rows else []), rows
    reader = csv.DictReader(text.splitlines())
    rows = [(reader.line_num, {k: v for k, v in row.items() if k is not None and v is not None})
            for row in reader]  # fmt: skip
    return list(reader.fieldnames or []), rows


@dataclass
class PairScan:
    """A pairs file read row by row: the usable rows and the rows left out.

    total: data rows in the file. rows, paths, captions: the usable rows in file order,
    `rows` holding their positions among the data rows (0-based). skips: (position,
    reason, example) of each row left out; reason is a SKIP_* value, example the missing
    path or FILE:LINE.
    """

    file: Path
    total: int = 0
    rows: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    skips: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def skipped(self) -> dict[str, int]:
        """reason -> rows left out for it."""
        counts: dict[str, int] = {}
        for _, why, _ in self.skips:
            counts[why] = counts.get(why, 0) + 1
        return counts

    @property
    def example(self) -> dict[str, str]:
        """reason -> the first row left out for it."""
        first: dict[str, str] = {}
        for _, why, example in self.skips:
            first.setdefault(why, example)
        return first

    def select(self, positions: Tensor) -> PairScan:
        """The rows at `positions` (int64 [K], positions among the data rows), usable or not."""
        keep = set(positions.tolist())
        usable = [i for i, row in enumerate(self.rows) if row in keep]
        return PairScan(
            self.file,
            total=len(keep),
            rows=[self.rows[i] for i in usable],
            paths=[self.paths[i] for i in usable],
            captions=[self.captions[i] for i in usable],
            skips=[skip for skip in self.skips if skip[0] in keep],
        )


def _resolve(image: object, file: Path) -> Path:
    """A row's image value -> its path; relative paths resolve against the file's folder."""
    path = Path(str(image)).expanduser()
    return path if path.is_absolute() else file.parent / path


def _add_row(scan: PairScan, position: int, line: int, image: object, caption: object) -> None:
    """Keep one row, or record why it is left out (a missing image before an empty caption)."""
    path = _resolve(image, scan.file) if image not in (None, "") else None
    if path is None or not path.is_file():
        example = str(path) if path is not None else f"{scan.file}:{line} (no path)"
        scan.skips.append((position, SKIP_MISSING_FILE, example))
    elif caption is None or not str(caption).strip():  # JSON null: an exported NaN caption
        scan.skips.append((position, SKIP_EMPTY_CAPTION, f"{scan.file}:{line}"))
    else:
        scan.rows.append(position)
        scan.paths.append(str(path))
        scan.captions.append(str(caption))


def scan_pairs(file: Path) -> PairScan:
    """Read a CSV with a header, or JSONL, of image paths and captions.

    Rows whose image file is missing or whose caption is empty are left out and counted
    (PairScan.skips); a file with no usable row, or a row without the image or caption
    column at all (a malformed file, not a bad sample), is a DataError.
    """
    if not file.is_file():
        raise DataError(f"pairs file {file} does not exist")
    columns, rows = _read_rows(file)
    if not rows:
        raise DataError(f"{file} holds no image-caption pairs")
    image_col, text_col = _pick(columns, IMAGE_COLUMNS, file), _pick(columns, TEXT_COLUMNS, file)
    scan = PairScan(file, total=len(rows))
    for position, (line, row) in enumerate(rows):
        if image_col not in row or text_col not in row:
            raise DataError(f"{file}:{line}: the row lacks {image_col!r} or {text_col!r}: {row}")
        _add_row(scan, position, line, row[image_col], row[text_col])
    if not scan.paths:
        raise DataError(
            f"{file}: none of its {scan.total} rows is usable: "
            f"{describe_skips(scan.skipped, scan.example)}; relative paths resolve "
            f"against {file.parent}"
        )
    return scan


def holdout_rows(num_rows: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(training rows, held-out rows), each int64 sorted: a fixed permutation of the row
    positions from `seed`, its first round(fraction * num_rows) held out, at most all
    but one row. Chosen among all rows, usable or not, so an image that goes missing
    later moves no other row between the two parts."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_rows, generator=gen)
    held = min(round(fraction * num_rows), num_rows - 1) if fraction > 0 else 0
    return perm[held:].sort().values, perm[:held].sort().values


def warn_skipped_rows(scan: PairScan, what: str, stacklevel: int) -> None:
    """One warning naming the rows `scan` left out, by reason with an example; none if none."""
    if scan.skips:
        warnings.warn(
            f"pairs: skipped {len(scan.skips)} of the {scan.total} {what} of {scan.file}: "
            f"{describe_skips(scan.skipped, scan.example)}",
            stacklevel=stacklevel + 1,
        )


def read_pairs(file: Path) -> tuple[list[str], list[str]]:
    """(image paths, captions) of the usable rows of a pairs file (see scan_pairs), with a
    warning naming the rows left out."""
    scan = scan_pairs(file)
    warn_skipped_rows(scan, "rows", stacklevel=2)
    return scan.paths, scan.captions
