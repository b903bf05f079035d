"""In-memory image sets (digits, idx files, torchvision arrays).

The whole set is one uint8 tensor that moves to the training device once; every batch
is an `index_select` there. No CPU DataLoader, no per-batch host-to-device copy: this
is what lets a small-image run keep a GPU busy.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from contrastkit.training.data.base import (
    Batch,
    DataError,
    LabelledArrays,
    TrainData,
    check_batching,
    rank_chunks,
)

# Labelled sets without their own test split hold out this fraction for kNN queries.
HOLDOUT_FRACTION = 0.2
# Fixed, so load_data (whatever its seed) and load_knn_data agree on the split.
SPLIT_SEED = 1234


def to_nchw(images: Tensor | np.ndarray) -> Tensor:
    """[N,H,W] / [N,H,W,C] / [N,C,H,W] (C = 1 or 3) uint8 -> uint8 [N, C, H, W], contiguous."""
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images
    if x.dtype != torch.uint8:
        raise DataError(f"expected uint8 images, got {x.dtype}")
    if x.ndim == 3:
        return x.unsqueeze(1).contiguous()
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x.contiguous()
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return x.permute(0, 3, 1, 2).contiguous()
    raise DataError(f"cannot read images of shape {tuple(x.shape)} as [N, C, H, W]")


def holdout_split(num_samples: int) -> tuple[Tensor, Tensor]:
    """Deterministic 80/20 split: (train indices, query indices), each sorted int64."""
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    perm = torch.randperm(num_samples, generator=gen)
    n_query = int(num_samples * HOLDOUT_FRACTION)
    return perm[n_query:].sort().values, perm[:n_query].sort().values


def take(arrays: LabelledArrays, index: Tensor) -> LabelledArrays:
    """The rows `index` of a labelled set."""
    return LabelledArrays(arrays.images[index], arrays.labels[index], arrays.classes)


class ArrayData(TrainData):
    """A training set held as one uint8 tensor.

    images: uint8 [N, C, H, W] (CPU); labels: int64 [N] or None.
    """

    def __init__(
        self, images: Tensor, labels: Tensor | None, classes: list[str] | None, seed: int = 0
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"expected uint8 [N, 1|3, H, W], got {images.dtype} {images.shape}")
        if labels is not None and labels.shape != (images.shape[0],):
            raise DataError(f"{images.shape[0]} images but labels of shape {labels.shape}")
        if images.shape[0] == 0:
            raise DataError("the data set is empty")
        self.images = images
        self.labels = None if labels is None else labels.long()
        self.num_samples = int(images.shape[0])
        self.channels = int(images.shape[1])
        self.classes = classes
        self.has_texts = False
        self.seed = seed
        self._on_device: dict[torch.device, tuple[Tensor, Tensor | None]] = {}

    def on_device(self, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """(images, labels) on `device`, copied there on first use and kept."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._on_device:
            labels = None if self.labels is None else self.labels.to(device)
            self._on_device[device] = (self.images.to(device), labels)
        return self._on_device[device]

    def batches(
        self,
        epoch: int,
        batch_size: int,
        device: torch.device,
        *,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> Iterator[Batch]:
        check_batching(self.num_samples, batch_size, world_size, rank, start_step)
        images, labels = self.on_device(device)
        # One small copy of the order per epoch; the per-step slices then stay on the device.
        perm = self.order(epoch).to(images.device)
        for index in rank_chunks(perm, batch_size, world_size, rank, start_step):
            yield Batch(
                images=images.index_select(0, index),
                labels=None if labels is None else labels.index_select(0, index),
                texts=None,
                index=index,
            )
