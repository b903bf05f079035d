"""Array sources: idx files (MNIST, Fashion-MNIST) and scikit-learn's digits."""

from __future__ import annotations

import functools
import gzip
import math
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from contrastkit.training.data.base import DataError, LabelledArrays

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# idx type byte -> numpy dtype (the format is big-endian).
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


_READ_CHUNK = 2**20  # bytes read at a time, so memory follows the bytes that exist


def _idx_layout(head: bytes, name: str) -> tuple[np.dtype[Any], tuple[int, ...], int, int]:
    """Check an idx header (magic, ndim, sizes) -> (dtype, shape, header bytes, total
    bytes the file must have). `head` needs at least the header's bytes."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise DataError(f"{name} is not an idx file (bad magic {head[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[head[2]], head[3]
    header = 4 + 4 * ndim
    if len(head) < header:
        raise DataError(f"{name}: the idx header needs {header} bytes, the file has {len(head)}")
    shape = tuple(int(d) for d in np.frombuffer(head[4:header], dtype=">u4"))
    # Python integers: numpy's product of sizes such as (65536,) * 4 wraps to 0 in int64.
    return dtype, shape, header, header + math.prod(shape) * dtype.itemsize


def parse_idx(raw: bytes, name: str = "idx data") -> np.ndarray:
    """Decode the idx format: 2 zero bytes, a type byte, ndim, ndim big-endian uint32
    sizes, then the values in C order. Returns an array of that shape."""
    dtype, shape, header, expected = _idx_layout(raw, name)
    if len(raw) != expected:
        raise DataError(
            f"{name}: the header says {shape} ({expected} bytes), the file has {len(raw)}"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))  # native byte order for torch


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _read_at_most(f: _Readable, limit: int) -> bytes:
    """Up to `limit` bytes, read in chunks: a single read(limit) would allocate `limit`
    bytes up front, whatever the file holds."""
    chunks, got = [], 0
    while got < limit:
        chunk = f.read(min(_READ_CHUNK, limit - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


@functools.lru_cache(maxsize=8)
def read_idx(path: str) -> np.ndarray:
    """Read a (possibly gzipped) idx file; cached, since training and kNN both load it.

    The header is checked against the file's size before the values are read, and a
    gzipped file is read no further than its header's size (+1 byte, to see it ends),
    so a header that claims more than the file holds costs no memory.
    """
    gz = path.endswith(".gz")
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            head += f.read(4 * head[3]) if len(head) == 4 else b""
            _, shape, _, expected = _idx_layout(head, path)
            if gz:  # read until it ends or passes the expected size, whichever is first
                raw = head + _read_at_most(f, expected - len(head) + 1)
                size = len(raw)
            else:  # the size is known before anything is read
                size = os.fstat(f.fileno()).st_size
                raw = head + f.read() if size == expected else b""
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if size != expected:
        has = f"more than {expected}" if size > expected else str(size)
        raise DataError(f"{path}: the header says {shape} ({expected} bytes), the file has {has}")
    return parse_idx(raw, path)


def find_idx(folder: Path, prefix: str, kind: str) -> Path:
    """The file for e.g. ('train', 'images-idx3'): dash or dot spelling, plain or .gz."""
    stems = [f"{prefix}-{kind}-ubyte", f"{prefix}-{kind.replace('-', '.')}-ubyte"]
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise DataError(
        f"no {stems[0]}[.gz] in {folder}; an idx folder holds train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte "
        "(optionally .gz)"
    )


def load_idx_split(folder: str | Path, prefix: str, classes: list[str]) -> LabelledArrays:
    """One split ('train' or 't10k') of an idx folder -> uint8 [N,1,H,W], int64 [N]."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"idx folder {folder} does not exist")
    images = read_idx(str(find_idx(folder, prefix, "images-idx3")))
    labels = read_idx(str(find_idx(folder, prefix, "labels-idx1")))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{folder}: {prefix} images should be uint8 [N,H,W], got {images.shape}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{folder}: {images.shape[0]} {prefix} images but {labels.shape} labels")
    if labels.size and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
        raise DataError(f"{folder}: {prefix} labels outside 0..{len(classes) - 1}")
    return LabelledArrays(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        list(classes),
    )


def load_digits_arrays() -> LabelledArrays:
    """scikit-learn's 1,797 8x8 digits: values 0..16 scaled to uint8 0..255, [N,1,8,8]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        from contrastkit.training.extras import install_hint

        raise DataError(f"--data digits {install_hint('sklearn')}") from e
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return LabelledArrays(
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(digits.target.astype(np.int64)),
        list(DIGIT_WORDS),
    )
