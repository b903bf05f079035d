"""The data contract every `--data` source meets: Batch, TrainData, LabelledArrays.

Batch order (the same for every source, so a resumed or distributed run sees exactly
the batches of a plain run):

    perm = torch.randperm(N, generator=Generator().manual_seed(seed * 1000003 + epoch))
    global batch g = perm[g*B*W : (g+1)*B*W]         # B = batch_size, W = world_size
    rank r takes   perm[g*B*W + r*B : g*B*W + (r+1)*B]

An incomplete last global batch is dropped, and `start_step` skips that many global
batches (resume mid-epoch).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

# A large prime, so (seed, epoch) pairs map to distinct generator seeds.
SEED_STRIDE = 1000003


class DataError(ValueError):
    """A bad `--data` spec, or files that are missing or unusable; the message says what to do."""


@dataclass
class Batch:
    """One process's share of one global batch.

    images: uint8 [B, C, H, W], C = 1 or 3, on the training device.
    labels: int64 [B] on the device, or None when the data has no labels.
    texts: B captions (image-text pairs), or None.
    index: int64 [B] dataset indices of the rows, on the device.
    """

    images: Tensor
    labels: Tensor | None
    texts: list[str] | None
    index: Tensor


@dataclass
class LabelledArrays:
    """A labelled image set held in memory, for kNN evaluation.

    images: uint8 [N, C, H, W] on the CPU; labels: int64 [N] on the CPU, values
    index `classes`.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.shape[0] != self.labels.shape[0]:
            raise DataError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")


def dense_labels(ids: Tensor) -> tuple[Tensor, list[str]]:
    """Class ids as the files hold them -> (labels, class names).

    ids: int64 [N], any values. Returns int64 [N] labels in 0..K-1 and K names (each
    id as text, in increasing order), K = the distinct ids present. The class list is
    sized by the data actually read, never by the largest id (one id of 5e9 would
    otherwise ask for five billion names).
    """
    values, labels = torch.unique(ids, sorted=True, return_inverse=True)
    return labels.long(), [str(v) for v in values.tolist()]


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> Tensor:
    """The epoch's order: int64 [N] on the CPU, a pure function of (N, seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * SEED_STRIDE + epoch)
    return torch.randperm(num_samples, generator=gen)


def check_batching(
    num_samples: int, batch_size: int, world_size: int, rank: int = 0, start_step: int = 0
) -> int:
    """Validate the batching arguments; returns steps per epoch (drop_last)."""
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size ({batch_size}) and world_size ({world_size}) must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    global_batch = batch_size * world_size
    if global_batch > num_samples:
        raise DataError(
            f"the global batch (batch_size {batch_size} x world_size {world_size} = "
            f"{global_batch}) is larger than the data set ({num_samples} samples); "
            "use a smaller --batch-size"
        )
    return num_samples // global_batch


def rank_chunks(
    perm: Tensor, batch_size: int, world_size: int, rank: int, start_step: int
) -> Iterator[Tensor]:
    """This rank's rows of each global batch, from `start_step` on: int64 [B] views of perm."""
    global_batch = batch_size * world_size
    steps = perm.shape[0] // global_batch
    for step in range(start_step, steps):
        lo = step * global_batch + rank * batch_size
        yield perm[lo : lo + batch_size]


class TrainData(ABC):
    """A training set. Attributes: num_samples, channels (1 or 3), classes (names, or
    None when unlabelled), has_texts (captions in Batch.texts)."""

    num_samples: int
    channels: int
    classes: list[str] | None
    has_texts: bool
    seed: int

    def skipped_samples(self) -> dict[str, int]:
        """Samples left out so far, by reason (bad members, unreadable images); {} for
        sets that cannot have any."""
        return {}

    def skip_examples(self) -> dict[str, str]:
        """One sample per reason of `skipped_samples` (a path, FILE:LINE or shard:key)."""
        return {}

    def source_size(self) -> int:
        """Samples the source holds, those left out when it was opened included."""
        return self.num_samples

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        """Full global batches per epoch (the last incomplete one is dropped)."""
        return check_batching(self.num_samples, batch_size, world_size)

    def order(self, epoch: int) -> Tensor:
        """The epoch's permutation of sample indices, int64 [N] on the CPU."""
        return epoch_permutation(self.num_samples, self.seed, epoch)

    @abstractmethod
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
        """Yield this rank's batches of `epoch` in the module's order, from `start_step`."""
