"""kNN accuracy of the backbone's features during training (when the data has labels)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from contrastkit.training import dist
from contrastkit.training.augment import Augmenter
from contrastkit.training.config import TrainConfig
from contrastkit.training.data import LabelledArrays, load_knn_data
from contrastkit.training.data.size import image_size_of
from contrastkit.training.evaluate.knn import embed, knn_accuracy
from contrastkit.training.methods.base import Method

log = logging.getLogger("contrastive.train")
_UNLOADED: Any = object()


class OnlineKNN:
    """Embeds a labelled bank and query set with the current backbone; rank 0 only.

    The bank is capped at `knn_max_train` images (a fixed random subset), so the
    evaluation costs seconds, not minutes, on large sets.
    """

    def __init__(self, cfg: TrainConfig, augment: Augmenter, device: torch.device) -> None:
        self.cfg = cfg
        self.augment = augment
        self.device = device
        self._data: tuple[LabelledArrays, LabelledArrays] | None = _UNLOADED

    def _load(self) -> tuple[LabelledArrays, LabelledArrays] | None:
        if self._data is _UNLOADED:
            data = load_knn_data(self.cfg.data, image_size=image_size_of(self.cfg))
            if data is not None and data[0].images.shape[0] > self.cfg.knn_max_train:
                bank, queries = data
                gen = torch.Generator().manual_seed(self.cfg.seed)
                keep = torch.randperm(bank.images.shape[0], generator=gen)
                keep = keep[: self.cfg.knn_max_train]
                bank = LabelledArrays(bank.images[keep], bank.labels[keep], bank.classes)
                data = (bank, queries)
            self._data = data
        return self._data

    def maybe_run(
        self,
        method: Method[Any],
        autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    ) -> float | None:
        """Top-1 kNN accuracy, or None (no labels, disabled, or not rank 0)."""
        if not self.cfg.knn_every:
            return None
        acc = None
        if dist.is_main():
            data = self._load()
            if data is not None:
                acc = self._evaluate(method, autocast, *data)
        dist.barrier()
        return acc

    def _evaluate(
        self,
        method: Method[Any],
        autocast: Callable[[], contextlib.AbstractContextManager[Any]],
        bank: LabelledArrays,
        queries: LabelledArrays,
    ) -> float:
        size = image_size_of(self.cfg)

        def features(u8: torch.Tensor) -> torch.Tensor:
            with autocast():
                return method.image_features(self.augment.eval_view(u8, size)).float()

        was_training = method.training
        method.eval()
        try:
            with torch.no_grad():
                bank_f = embed(features, bank.images, self.device)
                query_f = embed(features, queries.images, self.device)
        finally:
            method.train(was_training)
        return knn_accuracy(
            bank_f, bank.labels.to(self.device), query_f, queries.labels,
            len(bank.classes), self.cfg.knn_k, self.cfg.knn_t,
        )  # fmt: skip
