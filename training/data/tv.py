"""`torchvision:NAME[:ROOT]`: torchvision's data sets, downloaded on first use.

Sets that expose their pixels as one array (`.data`: CIFAR, MNIST-likes, STL10, SVHN)
become in-memory array sets; others go through the file decode path.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from contrastkit.training.data.arrays import ArrayData, to_nchw
from contrastkit.training.data.base import DataError, LabelledArrays, TrainData
from contrastkit.training.data.loader import FileData, decode_all

EXAMPLES = "CIFAR10, CIFAR100, MNIST, FashionMNIST, KMNIST, STL10, SVHN"
# Classes a set without names may number (its names are then "0".."K-1"); torchvision's
# sets have at most thousands, so a larger id is a corrupt label.
MAX_NUMBERED_CLASSES = 100_000


def default_root(name: str) -> Path:
    return Path("~/.cache/contrastive").expanduser() / name


def dataset_class(name: str) -> type:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, name, None)
    if not isinstance(cls, type):
        raise DataError(f"torchvision.datasets has no data set {name!r}; e.g. {EXAMPLES}")
    return cls


def open_split(name: str, root: Path, train: bool) -> Any:
    """The train (or test) split of torchvision.datasets.NAME, downloading into root."""
    cls = dataset_class(name)
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {"download": True} if "download" in params else {}
    if "train" in params:
        kwargs["train"] = train
    elif "split" in params:
        kwargs["split"] = "train" if train else "test"
    try:
        return cls(str(root), **kwargs)
    except Exception as e:  # download and integrity failures come in many types
        raise DataError(
            f"could not load torchvision:{name} into {root}: {type(e).__name__}: {e}. "
            "It downloads on first use, so the first run needs internet access "
            "(or put the files in that folder; torchvision:NAME:ROOT picks another)"
        ) from e


def _labels(dataset: Any) -> Tensor | None:
    for attr in ("targets", "labels", "_labels"):
        value = getattr(dataset, attr, None)
        if value is not None and len(value) == len(dataset):
            return torch.as_tensor(np.asarray(value), dtype=torch.int64)
    return None


def _classes(dataset: Any, labels: Tensor | None) -> list[str] | None:
    if labels is None:
        return None
    names = getattr(dataset, "classes", None)
    if isinstance(names, list | tuple) and all(isinstance(c, str) for c in names):
        return list(names)
    # Numbered classes 0..max: the names list is sized by the largest id, so that id is
    # bounded (a stray id of 5e9 would ask for five billion names).
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= MAX_NUMBERED_CLASSES:
        raise DataError(
            f"{type(dataset).__name__}: class ids {low}..{high} are outside "
            f"0..{MAX_NUMBERED_CLASSES - 1} and the data set names no classes"
        )
    return [str(i) for i in range(high + 1)]


def _pixels(dataset: Any) -> Tensor | None:
    """uint8 [N, C, H, W] when the set holds its pixels as one array, else None."""
    data = getattr(dataset, "data", None)
    if isinstance(data, Tensor | np.ndarray) and data.dtype in (np.uint8, torch.uint8):
        return to_nchw(data)
    return None


class TorchvisionSource:
    """Images from a torchvision data set that returns (PIL image, target) pairs."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def open(self, index: int, size: int) -> Image.Image:
        image = self.dataset[index][0]
        if not isinstance(image, Image.Image):
            raise DataError(f"item {index} is a {type(image).__name__}, not a PIL image")
        return image

    def name(self, index: int) -> str:
        return f"{type(self.dataset).__name__}[{index}]"


def load_train(name: str, root: Path, size: int, seed: int, workers: int) -> TrainData:
    dataset = open_split(name, root, train=True)
    labels = _labels(dataset)
    pixels = _pixels(dataset)
    if pixels is not None:
        return ArrayData(pixels, labels, _classes(dataset, labels), seed)
    return FileData(
        TorchvisionSource(dataset), size=size, labels=labels,
        classes=_classes(dataset, labels), seed=seed, workers=workers,
    )  # fmt: skip


def load_knn(
    name: str, root: Path, size: int, crop: int, workers: int
) -> tuple[LabelledArrays, LabelledArrays] | None:
    out = []
    for train in (True, False):
        dataset = open_split(name, root, train=train)
        labels = _labels(dataset)
        classes = _classes(dataset, labels)
        if labels is None or classes is None:
            return None
        pixels = _pixels(dataset)
        if pixels is not None:
            out.append(LabelledArrays(pixels, labels, classes))
        else:
            source = TorchvisionSource(dataset)
            out.append(decode_all(source, labels, classes, size, crop, workers))
    # The test split names its classes like the train split; keep the train names.
    return out[0], LabelledArrays(out[1].images, out[1].labels, out[0].classes)
