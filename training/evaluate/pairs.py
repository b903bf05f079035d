"""`--data pairs:FILE` for evaluation: every image of the file with its caption.

The images stay on disk and are decoded a batch at a time (`ImageFiles`), so a large
pairs file costs one batch of pictures in memory, not all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import overload

from PIL import Image

from contrastkit.training.data import DataError
from contrastkit.training.data.files import read_pairs


class ImageFiles(Sequence[Image.Image]):
    """Image paths that read as PIL images (RGB) when indexed or sliced."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...
    @overload
    def __getitem__(self, index: slice) -> list[Image.Image]: ...
    def __getitem__(self, index: int | slice) -> Image.Image | list[Image.Image]:
        if isinstance(index, slice):
            return [_open(p) for p in self.paths[index]]
        return _open(self.paths[index])


def _open(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:  # a truncated or non-image file: name it
        raise DataError(f"cannot read image {path}: {e}") from e


def read_pair_spec(path: str) -> tuple[list[str], list[str]]:
    """pairs:FILE's path -> (image paths, captions), one per usable row of the file; rows
    with a missing image or an empty caption are left out, with a warning that counts them."""
    return read_pairs(Path(path).expanduser())
