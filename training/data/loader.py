"""Sets decoded from files (folders, image-caption pairs, torchvision file sets).

Decoding runs in a torch DataLoader with `workers` processes that stay alive across
epochs; the batch order still comes from the main process (a batch sampler that follows
the module-wide order in base.py), so resume and multi-GPU runs match the array sets.
An unreadable file is replaced by the next readable one (so every rank's batch keeps its
size, which all-gather needs) and is reported once with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Protocol

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from contrastkit.training.data.base import (
    Batch,
    DataError,
    LabelledArrays,
    TrainData,
    check_batching,
    epoch_permutation,
    rank_chunks,
)
from contrastkit.training.data.files import decode, open_image

MAX_TRIES = 16  # consecutive unreadable files before we give up on the data set
MAX_WARNINGS = 10  # individual warnings; later failures are only counted
UNREADABLE = "unreadable image"  # the reason skipped_samples() gives decode failures

Bad = list[tuple[int, str]]  # (index, error) of unreadable files met while decoding


class ImageSource(Protocol):
    """Random access to undecoded images; must pickle (it travels to the workers)."""

    def __len__(self) -> int: ...
    def open(self, index: int, size: int) -> Image.Image: ...
    def name(self, index: int) -> str: ...


class PathSource:
    """Images given by file path."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def open(self, index: int, size: int) -> Image.Image:
        return open_image(self.paths[index], size)

    def name(self, index: int) -> str:
        return self.paths[index]


class DecodeDataset(Dataset[tuple[Tensor | None, int, Bad]]):
    """index -> (uint8 [3, crop, crop] or None, index actually decoded, unreadable files).

    substitute=True: an unreadable file is replaced by the next readable one.
    """

    def __init__(self, source: ImageSource, size: int, crop: int, substitute: bool) -> None:
        self.source, self.size, self.crop, self.substitute = source, size, crop, substitute

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, Bad]:
        bad: Bad = []
        for k in range(MAX_TRIES if self.substitute else 1):
            i = (index + k) % len(self.source)
            try:
                return decode(self.source.open(i, self.size), self.size, self.crop), i, bad
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
                bad.append((i, f"{type(e).__name__}: {e}"))
        if self.substitute:
            raise DataError(
                f"{MAX_TRIES} images in a row are unreadable, starting at "
                f"{self.source.name(index)} ({bad[0][1]})"
            )
        return None, index, bad


def collate(items: list[tuple[Tensor | None, int, Bad]]) -> tuple[Tensor, Tensor, Bad]:
    """-> images uint8 [b, 3, S, S] (unreadable rows dropped), int64 [b] indices, failures."""
    kept = [(img, i) for img, i, _ in items if img is not None]
    bad = [b for _, _, bs in items for b in bs]
    if not kept:
        return torch.empty(0, 3, 0, 0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad
    return (
        torch.stack([img for img, _ in kept]),
        torch.tensor([i for _, i in kept], dtype=torch.long),
        bad,
    )


class OrderSampler(Sampler[list[int]]):
    """Yields this rank's index lists for one epoch, per base.py's order; `set` before use."""

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples, self.seed = num_samples, seed
        self.epoch, self.batch_size, self.world_size, self.rank, self.start_step = 0, 1, 1, 0, 0

    def set(self, epoch: int, batch_size: int, world_size: int, rank: int, start: int) -> None:
        self.epoch, self.batch_size, self.world_size = epoch, batch_size, world_size
        self.rank, self.start_step = rank, start

    def __iter__(self) -> Iterator[list[int]]:
        perm = epoch_permutation(self.num_samples, self.seed, self.epoch)
        chunks = rank_chunks(perm, self.batch_size, self.world_size, self.rank, self.start_step)
        for chunk in chunks:
            yield chunk.tolist()

    def __len__(self) -> int:
        steps = self.num_samples // (self.batch_size * self.world_size)
        return max(0, steps - self.start_step)


class FileData(TrainData):
    """A training set decoded on the fly to uint8 [3, L, L], L = load size.

    One `batches()` iteration at a time: they share the loader and its workers.
    """

    def __init__(
        self,
        source: ImageSource,
        *,
        size: int,
        labels: Tensor | None = None,
        classes: list[str] | None = None,
        texts: list[str] | None = None,
        seed: int = 0,
        workers: int = 4,
        skipped: dict[str, int] | None = None,
        examples: dict[str, str] | None = None,
    ) -> None:
        """skipped: samples the source left out while it was opened, by reason;
        examples: one of them per reason."""
        if len(source) == 0:
            raise DataError("the data set is empty")
        # More decode processes than usable cores only adds contention.
        self.workers = min(workers, len(os.sched_getaffinity(0)))
        self.source, self.size = source, size
        self.labels, self.classes, self.texts = labels, classes, texts
        self.num_samples, self.channels, self.has_texts = len(source), 3, texts is not None
        self.seed = seed
        self.unreadable: dict[int, str] = {}
        self.skipped_at_load = dict(skipped or {})
        self.examples_at_load = dict(examples or {})
        self._sampler = OrderSampler(self.num_samples, seed)
        self._loaders: dict[bool, DataLoader[tuple[Tensor | None, int, Bad]]] = {}

    @property
    def skipped(self) -> int:
        """How many distinct unreadable files were met so far."""
        return len(self.unreadable)

    def skipped_samples(self) -> dict[str, int]:
        counts = {k: v for k, v in self.skipped_at_load.items() if v}
        if self.unreadable:
            counts[UNREADABLE] = len(self.unreadable)
        return counts

    def skip_examples(self) -> dict[str, str]:
        examples = dict(self.examples_at_load)
        if self.unreadable:
            index, error = next(iter(self.unreadable.items()))  # the first one met
            first_line = error.partition("\n")[0]  # the message goes into a one-line error
            examples[UNREADABLE] = f"{self.source.name(index)}: {first_line}"
        return examples

    def source_size(self) -> int:
        return self.num_samples + sum(self.skipped_at_load.values())

    def merge_unreadable(self, found: dict[int, str]) -> None:
        """Count unreadable files that other ranks met (each rank decodes its own share)."""
        for index, error in found.items():
            self.unreadable.setdefault(index, error)

    def _loader(self, pin: bool) -> DataLoader[tuple[Tensor | None, int, Bad]]:
        if pin not in self._loaders:
            self._loaders[pin] = DataLoader(
                DecodeDataset(self.source, self.size, self.size, substitute=True),
                batch_sampler=self._sampler,
                num_workers=self.workers,
                collate_fn=collate,
                pin_memory=pin,
                persistent_workers=self.workers > 0,  # no worker start-up cost per epoch
            )
        return self._loaders[pin]

    def _note(self, bad: Bad) -> None:
        for index, error in bad:
            if index not in self.unreadable:
                self.unreadable[index] = error
                if len(self.unreadable) <= MAX_WARNINGS:
                    warnings.warn(
                        f"skipping unreadable image {self.source.name(index)}: {error}",
                        stacklevel=3,
                    )

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
        device = torch.device(device)
        self._sampler.set(epoch, batch_size, world_size, rank, start_step)
        for images, index, bad in self._loader(device.type == "cuda"):
            self._note(bad)
            labels = None if self.labels is None else self.labels[index].to(device)
            texts = None if self.texts is None else [self.texts[i] for i in index.tolist()]
            yield Batch(
                images=images.to(device, non_blocking=True),
                labels=labels,
                texts=texts,
                index=index.to(device),
            )


def decode_all(
    source: ImageSource, labels: Tensor, classes: list[str], size: int, crop: int, workers: int
) -> LabelledArrays:
    """Decode a whole labelled set into memory (kNN), dropping unreadable files with a warning."""
    loader = DataLoader(
        DecodeDataset(source, size, crop, substitute=False),
        batch_size=256,
        num_workers=min(workers, len(os.sched_getaffinity(0))),
        collate_fn=collate,
    )
    images, kept, failed = [], [], 0
    for batch, index, bad in loader:
        images.append(batch)
        kept.append(index)
        failed += len(bad)
    if failed:
        warnings.warn(f"skipped {failed} unreadable images out of {len(source)}", stacklevel=2)
    index = torch.cat(kept)
    if index.numel() == 0:
        raise DataError("none of the images could be read")
    full = [b for b in images if b.numel() > 0]
    return LabelledArrays(torch.cat(full), labels[index], classes)
