"""Training data: `--data SPEC` -> TrainData (batches on the device) and kNN arrays.

Specs:
    digits                   scikit-learn's 8x8 digits (smoke tests); 80/20 train/kNN split
    fashion-mnist[:DIR]      idx files (default /usr/share/datasets/fashion-mnist)
    mnist:DIR                idx files
    folder:DIR               images; one subfolder per class, or unlabelled;
                             DIR/train + DIR/val (or test) give the kNN bank and queries
    pairs:FILE               CSV/JSONL of image path + caption (CLIP); rows with a
                             missing image or an empty caption are skipped and counted;
                             `holdout` of the rows (chosen by seed) are not trained on
    shards:DIR|GLOB          webdataset-style .tar shards (KEY.jpg [+ KEY.txt] [+ KEY.cls]),
                             read in place (contrastkit.training.data.shards); no kNN split
    torchvision:NAME[:ROOT]  torchvision.datasets.NAME, downloaded into ROOT
                             (default ~/.cache/contrastive/NAME)

A labelled set without its own test split holds out a fixed 20% as kNN queries and
trains on the other 80%, so online kNN never scores images the encoder trained on.
Array sets keep native resolution (the augmenter resizes); file sets decode to the load
size round(image_size * 8 / 7) for training and centre-crop image_size for kNN.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from contrastkit.training.data.arrays import ArrayData, holdout_split, take
from contrastkit.training.data.base import Batch, DataError, LabelledArrays, TrainData, dense_labels
from contrastkit.training.data.files import (
    PairScan,
    holdout_rows,
    load_size,
    scan_folder,
    scan_pairs,
    split_dirs,
    warn_skipped_rows,
)
from contrastkit.training.data.idx import (
    DIGIT_WORDS,
    FASHION_CLASSES,
    FASHION_MNIST_DIR,
    load_digits_arrays,
    load_idx_split,
)
from contrastkit.training.data.loader import FileData, PathSource, decode_all
from contrastkit.training.data.skips import check_skipped, describe_skips

__all__ = [
    "Batch",
    "DataError",
    "DataSpec",
    "LabelledArrays",
    "TrainData",
    "load_data",
    "load_knn_data",
    "pairs_split",
    "parse_spec",
]

SPEC_FORMS = (
    "digits",
    "fashion-mnist[:DIR]",
    "mnist:DIR",
    "folder:DIR",
    "pairs:FILE",
    "shards:DIR|GLOB",
    "torchvision:NAME[:ROOT]",
)


@dataclass(frozen=True)
class DataSpec:
    """A parsed `--data` value. kind: one of digits, fashion-mnist, mnist, folder,
    pairs, torchvision; path: the folder/file/root; name: the torchvision class."""

    kind: str
    path: str | None = None
    name: str | None = None


def _unknown(spec: str, why: str) -> DataError:
    return DataError(f"--data {spec!r}: {why}; the forms are: {', '.join(SPEC_FORMS)}")


def parse_spec(spec: str) -> DataSpec:
    """'kind[:rest]' -> DataSpec; paths keep any further ':'."""
    kind, _, rest = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "digits" and not rest:
        return DataSpec("digits")
    if kind == "fashion-mnist":
        return DataSpec(kind, rest or FASHION_MNIST_DIR)
    if kind in ("mnist", "folder", "pairs", "shards"):
        if not rest:
            raise _unknown(spec, f"{kind} needs a path ({kind}:PATH)")
        return DataSpec(kind, rest)
    if kind == "torchvision":
        name, _, root = rest.partition(":")
        if not name:
            raise _unknown(spec, "torchvision needs a data set name, e.g. torchvision:CIFAR10")
        return DataSpec(kind, root or None, name)
    raise _unknown(spec, "unknown data spec")


def _classes_for(kind: str) -> list[str]:
    return FASHION_CLASSES if kind == "fashion-mnist" else DIGIT_WORDS


def _torchvision_root(parsed: DataSpec) -> Path:
    from contrastkit.training.data.tv import default_root

    assert parsed.name is not None
    return Path(parsed.path).expanduser() if parsed.path else default_root(parsed.name)


def load_data(
    spec: str,
    *,
    image_size: int = 32,
    seed: int = 0,
    workers: int = 4,
    holdout: float = 0.0,
    max_skipped: float | None = None,
) -> TrainData:
    """The training set named by `spec` (see the module docstring); `seed` sets the order.

    holdout: fraction of a pairs file's rows left out of training (pairs_split; other
    specs ignore it). max_skipped: raise DataError when more samples than this fraction
    of the set (and more than 10) were skipped while it was opened; None: no limit.
    """
    parsed = parse_spec(spec)
    if parsed.kind == "digits":
        digits = load_digits_arrays()
        part = take(digits, holdout_split(len(digits.labels))[0])
        return ArrayData(part.images, part.labels, part.classes, seed)
    if parsed.kind in ("fashion-mnist", "mnist"):
        assert parsed.path is not None
        train = load_idx_split(parsed.path, "train", _classes_for(parsed.kind))
        return ArrayData(train.images, train.labels, train.classes, seed)
    if parsed.kind == "folder":
        assert parsed.path is not None
        train_dir, val_dir = split_dirs(Path(parsed.path).expanduser())
        scan = scan_folder(train_dir)
        paths, labels = scan.paths, scan.labels
        if labels is not None and val_dir is None:
            keep = holdout_split(len(paths))[0]
            paths, labels = [paths[i] for i in keep.tolist()], labels[keep]
        return FileData(
            PathSource(paths), size=load_size(image_size), labels=labels,
            classes=scan.classes, seed=seed, workers=workers,
        )  # fmt: skip
    if parsed.kind == "pairs":
        assert parsed.path is not None
        return _pair_data(parsed.path, image_size, seed, workers, holdout, max_skipped)
    if parsed.kind == "shards":
        assert parsed.path is not None
        return _shard_data(parsed.path, image_size, seed, workers, max_skipped)
    from contrastkit.training.data.tv import load_train

    assert parsed.name is not None
    return load_train(parsed.name, _torchvision_root(parsed), load_size(image_size), seed, workers)


def pairs_split(path: str, holdout: float, seed: int) -> tuple[PairScan, PairScan]:
    """pairs:FILE's path -> (training rows, held-out rows): `holdout` of the file's rows,
    chosen by `seed` (holdout_rows); the held-out part is empty when holdout is 0."""
    scan = scan_pairs(Path(path).expanduser())
    train, held = holdout_rows(scan.total, holdout, seed)
    return scan.select(train), scan.select(held)


def _pair_data(
    path: str, image_size: int, seed: int, workers: int, holdout: float, max_skipped: float | None
) -> TrainData:
    train, held = pairs_split(path, holdout, seed)
    if not train.paths:
        raise DataError(
            f"{train.file}: none of its {train.total} training rows is usable "
            f"({describe_skips(train.skipped, train.example)}); the {held.total} held-out "
            f"rows (holdout={holdout:g}) are not trained on"
        )
    data = FileData(
        PathSource(train.paths), size=load_size(image_size), texts=train.captions,
        seed=seed, workers=workers, skipped=train.skipped, examples=train.example,
    )  # fmt: skip
    if max_skipped is not None:
        check_skipped(data, max_skipped)  # before the warning: past the limit, one line only
    warn_skipped_rows(train, "training rows" if held.total else "rows", stacklevel=3)
    return data


def _shard_data(
    spec: str, image_size: int, seed: int, workers: int, max_skipped: float | None
) -> TrainData:
    from contrastkit.training.data.shards import ShardSource, scan_shards, shard_paths

    scan = scan_shards(shard_paths(spec))
    ids = scan.labels
    labels, classes = dense_labels(ids) if ids is not None else (None, None)
    with_cls = sum(c is not None for c in scan.classes)
    if ids is None and with_cls:
        # All-or-nothing labels: say so, or a few missing .cls files quietly turn a
        # labelled set into an unlabelled one.
        warnings.warn(
            f"shards: only {with_cls} of {len(scan.classes)} samples have a .cls; "
            "training without labels",
            stacklevel=3,
        )
    data = FileData(
        ShardSource(scan), size=load_size(image_size), labels=labels, classes=classes,
        texts=scan.texts, seed=seed, workers=workers, skipped=scan.skipped,
        examples=scan.example,
    )  # fmt: skip
    if max_skipped is not None:
        check_skipped(data, max_skipped)  # before the warning: past the limit, one line only
    if scan.skipped:
        warnings.warn(
            f"shards: skipped {sum(scan.skipped.values())} samples: "
            f"{describe_skips(scan.skipped, scan.example)}",
            stacklevel=3,
        )
    return data


def _folder_knn(
    folder: Path, image_size: int, workers: int
) -> tuple[LabelledArrays, LabelledArrays] | None:
    train_dir, val_dir = split_dirs(folder)
    bank = scan_folder(train_dir)
    if bank.labels is None or bank.classes is None:
        return None
    if val_dir is None:
        bank_labels = bank.labels
        parts = [
            ([bank.paths[i] for i in ix.tolist()], bank_labels[ix])
            for ix in holdout_split(len(bank.paths))
        ]
    else:
        queries = scan_folder(val_dir, classes=bank.classes)
        if queries.labels is None:
            return None
        parts = [(bank.paths, bank.labels), (queries.paths, queries.labels)]
    size = load_size(image_size)
    decoded = [
        decode_all(PathSource(paths), labels, bank.classes, size, image_size, workers)
        for paths, labels in parts
    ]
    return decoded[0], decoded[1]


def load_knn_data(
    spec: str, *, image_size: int = 32, workers: int = 4
) -> tuple[LabelledArrays, LabelledArrays] | None:
    """(bank, queries) for kNN evaluation, on the CPU; None when the data has no labels."""
    parsed = parse_spec(spec)
    if parsed.kind == "digits":
        digits = load_digits_arrays()
        train, held = holdout_split(len(digits.labels))
        return take(digits, train), take(digits, held)
    if parsed.kind in ("fashion-mnist", "mnist"):
        assert parsed.path is not None
        classes = _classes_for(parsed.kind)
        return (
            load_idx_split(parsed.path, "train", classes),
            load_idx_split(parsed.path, "t10k", classes),
        )
    if parsed.kind == "folder":
        assert parsed.path is not None
        return _folder_knn(Path(parsed.path).expanduser(), image_size, workers)
    if parsed.kind in ("pairs", "shards"):
        return None
    from contrastkit.training.data.tv import load_knn

    assert parsed.name is not None
    return load_knn(
        parsed.name, _torchvision_root(parsed), load_size(image_size), image_size, workers
    )
