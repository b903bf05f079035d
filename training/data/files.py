"""Image files on disk: decoding, folder layouts and image-caption lists."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from training.data.base import DataError
from training.encoders.preprocess import clamp_aspect, ensure_rgb

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


def _read_rows(file: Path) -> list[dict[str, object]]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read pairs file {file}: {e}") from e
    if file.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(dict(json.loads(line)))
                except (json.JSONDecodeError, TypeError, ValueError) as e:
                    raise DataError(f"{file}:{n}: not a JSON object: {e}") from e
        return rows
    return list(csv.DictReader(text.splitlines()))


def read_pairs(file: Path) -> tuple[list[str], list[str]]:
    """(image paths, captions) from a CSV with a header, or JSONL; relative paths
    resolve against the file's folder."""
    if not file.is_file():
        raise DataError(f"pairs file {file} does not exist")
    rows = _read_rows(file)
    if not rows:
        raise DataError(f"{file} holds no image-caption pairs")
    columns = list(rows[0])
    image_col, text_col = _pick(columns, IMAGE_COLUMNS, file), _pick(columns, TEXT_COLUMNS, file)
    paths, captions, missing = [], [], []
    for row in rows:
        image, caption = row.get(image_col), row.get(text_col)
        if not image or caption is None:
            raise DataError(f"{file}: a row lacks {image_col!r} or {text_col!r}: {row}")
        path = Path(str(image)).expanduser()
        path = path if path.is_absolute() else file.parent / path
        if not path.is_file():
            missing.append(str(path))
        paths.append(str(path))
        captions.append(str(caption))
    if missing:
        raise DataError(
            f"{file}: {len(missing)} of {len(rows)} image files are missing, e.g. "
            f"{missing[:3]}; relative paths resolve against {file.parent}"
        )
    return paths, captions
