"""The measurements the demo takes of one model (before or after training).

All on held-out images the model never trained on. `DemoData` fixes the images and
the two augmented views once, so the initial and the trained model see exactly the
same inputs and their numbers compare like for like.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from contrastkit.training.augment import Augmenter, simclr_view
from contrastkit.training.config import TrainConfig
from contrastkit.training.data import LabelledArrays, load_knn_data
from contrastkit.training.data.size import image_size_of
from contrastkit.training.demo.embeddings import class_sorted_batch, project_2d
from contrastkit.training.demo.model import features, projections
from contrastkit.training.demo.temperature import LOSS_TAUS, loss_curve
from contrastkit.training.engine.knn_monitor import OnlineKNN
from contrastkit.training.evaluate.knn import knn_accuracy

HEATMAP_PER_CLASS = 8


@dataclass
class DemoData:
    """Held-out images for the figures, and the run's kNN evaluation.

    batch: uint8 [B, C, H, W] + labels [B] for the loss and pair figures, with their
    fixed views (float [B, 3, s, s] each) and unaugmented eval views (`originals`);
    heat: class-sorted uint8 images + labels for the heatmap; map_*: images for the 2-D map.
    """

    classes: list[str]
    batch_labels: torch.Tensor
    originals: torch.Tensor
    views: tuple[torch.Tensor, torch.Tensor]
    heat_images: torch.Tensor
    heat_labels: torch.Tensor
    map_images: torch.Tensor
    map_labels: torch.Tensor
    knn: OnlineKNN
    pixel_knn: float


def prepare(cfg: TrainConfig, batch: int, map_points: int) -> DemoData:
    """Load the held-out split of `cfg.data` and fix every input the figures use."""
    size = image_size_of(cfg)
    arrays = load_knn_data(cfg.data, image_size=size)
    if arrays is None:
        raise ValueError(f"--data {cfg.data} has no labels; the demo needs a labelled set")
    bank, queries = arrays
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(queries.labels), generator=gen)
    pick, map_pick = order[:batch], order[:map_points]
    augment = Augmenter("cpu", seed=cfg.seed + 1)
    images = queries.images[pick]
    spec = simclr_view(size)
    heat = class_sorted_batch(queries.labels, HEATMAP_PER_CLASS)
    return DemoData(
        classes=queries.classes, batch_labels=queries.labels[pick],
        originals=augment.eval_view(images, size),
        views=(augment(images, spec), augment(images, spec)),
        heat_images=queries.images[heat], heat_labels=queries.labels[heat],
        map_images=queries.images[map_pick], map_labels=queries.labels[map_pick],
        knn=OnlineKNN(cfg, augment, torch.device("cpu")),
        pixel_knn=pixel_knn(bank, queries, cfg),
    )  # fmt: skip


def pixel_knn(bank: LabelledArrays, queries: LabelledArrays, cfg: TrainConfig) -> float:
    """The same weighted kNN on raw pixels (mean-centred): the baseline any learned
    representation should be read against. The bank is capped like the run's."""
    if len(bank.labels) > cfg.knn_max_train:
        gen = torch.Generator().manual_seed(cfg.seed)
        keep = torch.randperm(len(bank.labels), generator=gen)[: cfg.knn_max_train]
        bank = LabelledArrays(bank.images[keep], bank.labels[keep], bank.classes)
    b = bank.images.flatten(1).float()
    mean = b.mean(0)
    q = queries.images.flatten(1).float() - mean
    return knn_accuracy(b - mean, bank.labels, q, queries.labels, len(bank.classes),
                        cfg.knn_k, cfg.knn_t)  # fmt: skip


@dataclass
class Analysis:
    """One model's numbers: kNN top-1 (the run's own evaluation) and its cost, heatmap features
    [N, d], 2-D map coordinates [M, 2], unit projections z1, z2 [B, p] of the fixed
    views, and NT-Xent at each of LOSS_TAUS."""

    knn: float
    knn_seconds: float
    heat_features: torch.Tensor
    map_xy: np.ndarray
    map_how: str
    z: tuple[torch.Tensor, torch.Tensor]
    loss_at: dict[float, float]


def analyse(method: Any, data: DemoData, cfg: TrainConfig) -> Analysis:
    """Measure `method` (CPU) on the demo's fixed inputs."""
    t0 = time.perf_counter()
    knn = data.knn.maybe_run(method, contextlib.nullcontext)
    knn_seconds = time.perf_counter() - t0
    if knn is None:
        raise ValueError("kNN evaluation returned nothing (knn_every = 0 or no labels)")
    size = image_size_of(cfg)
    xy, how = project_2d(features(method, data.map_images, size), seed=cfg.seed)
    z1, z2 = projections(method, torch.cat(data.views)).chunk(2)
    losses = loss_curve(z1, z2, list(LOSS_TAUS))
    return Analysis(
        knn=knn, knn_seconds=knn_seconds,
        heat_features=features(method, data.heat_images, size), map_xy=xy, map_how=how,
        z=(z1, z2), loss_at=dict(zip(LOSS_TAUS, losses, strict=True)),
    )  # fmt: skip


def anchor_similarities(z1: torch.Tensor, z2: torch.Tensor, i: int) -> tuple[torch.Tensor, int]:
    """Anchor = view 1 of image i: its cosine similarities to the 2B-1 other views [2B-1]
    (view 1 of every other image, then view 2 of every image) and the positive's index."""
    batch = z1.shape[0]
    cand = torch.cat([z1[:i], z1[i + 1 :], z2])
    return cand @ z1[i], batch - 1 + i


def median_anchor(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> int:
    """The image whose view-1 anchor has the median NT-Xent term at τ: a typical anchor,
    neither the easiest nor the hardest, for the temperature figure."""
    losses = []
    for i in range(z1.shape[0]):
        sims, pos = anchor_similarities(z1, z2, i)
        losses.append(float(-torch.log_softmax(sims / tau, 0)[pos]))
    return int(torch.tensor(losses).argsort()[len(losses) // 2])
