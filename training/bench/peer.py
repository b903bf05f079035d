"""The peer's pipeline for `contrastive bench train`: what users of the usual libraries run.

A torch DataLoader whose CPU worker processes apply torchvision.transforms.v2 to one image
at a time (the recipe of our SimCLR view: random resized crop, flip, colour jitter with
p 0.8, grayscale with p 0.2), collate, pin, copy to the device; then the engine's step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from contrastkit.training.augment import IMAGENET_MEAN, IMAGENET_STD, ViewSpec, simclr_view
from contrastkit.training.bench.pipelines import BenchSettings, step_on_views
from contrastkit.training.data import DataError
from contrastkit.training.engine.trainer import Trainer
from contrastkit.training.methods.base import Views

PREFETCH = 2  # the DataLoader's default prefetch_factor: batches queued per worker


def peer_transform(spec: ViewSpec) -> Callable[[Tensor], Tensor]:
    """torchvision.transforms.v2 for one image, the recipe of `spec`: uint8 [3, H, W] ->
    float32 [3, size, size], normalised as our views are."""
    from torchvision.transforms import v2

    if spec.blur_p or spec.solarize_p:
        raise ValueError("the peer pipeline implements crop, flip, jitter and grayscale only")
    return cast(
        Callable[[Tensor], Tensor],
        v2.Compose(
            [
                v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=True),
                v2.RandomHorizontalFlip(spec.hflip_p),
                v2.RandomApply([v2.ColorJitter(*spec.jitter)], p=spec.jitter_p),
                v2.RandomGrayscale(spec.gray_p),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        ),
    )


class PeerDataset(Dataset[tuple[Tensor, Tensor]]):
    """Index -> two independent views (float32 [3, size, size] each) of one image.

    images: uint8 [N, C, H, W] on the CPU; a 1-channel image is widened to RGB first,
    as a PIL pipeline does with .convert("RGB")."""

    def __init__(self, images: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img = self.images[i]
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        return self.transform(img), self.transform(img)


class Peer:
    """A DataLoader with CPU workers (per-image v2 augmentations), then the same step."""

    def __init__(self, name: str, trainer: Trainer, s: BenchSettings) -> None:
        images = getattr(trainer.data, "images", None)
        if not isinstance(images, Tensor):
            raise DataError(
                f"bench train needs an in-memory data set (digits, fashion-mnist, mnist), "
                f"not {s.data!r}"
            )
        self.name, self.trainer, self.timed, self.warmup = name, trainer, s.e2e_iters, s.warmup
        self.workers = s.workers
        dataset = PeerDataset(images, peer_transform(simclr_view(s.image_size)))
        self.loader: DataLoader[tuple[Tensor, Tensor]] = DataLoader(
            dataset,
            batch_size=s.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=s.workers,
            pin_memory=trainer.device.type == "cuda",
            persistent_workers=s.workers > 0,
            generator=torch.Generator().manual_seed(s.seed),
        )
        self.it: Iterator[tuple[Tensor, Tensor]] = iter(self.loader)

    def warm(self, first: bool) -> int:
        # The workers fill a queue of PREFETCH batches each while other pipelines run;
        # a window must first use those up, or it would time batches made for free.
        drain = PREFETCH * self.workers
        return max(self.warmup, drain) if first else drain

    def step(self) -> None:
        try:
            v1, v2 = next(self.it)
        except StopIteration:  # end of an epoch: the peer pays its restart, as in training
            self.it = iter(self.loader)
            v1, v2 = next(self.it)
        dev = self.trainer.device
        views = Views(crops=[v1.to(dev, non_blocking=True), v2.to(dev, non_blocking=True)])
        step_on_views(self.trainer, views)

    def close(self) -> None:
        """Stop the worker processes."""
        with contextlib.suppress(Exception):
            del self.it
        del self.loader
