"""Weighted k-nearest-neighbour classification of embeddings (Wu et al. 2018).

Each of the k nearest bank items (cosine similarity s) votes for its class with weight
exp(s / t); the class with the largest total wins. This is the online-evaluation metric
of SimCLR/MoCo/BYOL repositories and the one PERFORMANCE.md quotes (k=200, t=0.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """bank [N, d], bank_labels int64 [N], queries [Q, d] -> predicted labels int64 [Q].

    Features are L2-normalised here; queries are processed in chunks of `chunk` rows so
    the [chunk, N] similarity matrix stays small.
    """
    if t <= 0:
        raise ValueError(f"knn temperature must be positive, got {t}")
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    preds = []
    for q in F.normalize(queries.float(), dim=1).split(chunk):
        sims, idx = (q @ bank.T).topk(k, dim=1)  # [c, k]
        weights = (sims / t).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=q.device, dtype=weights.dtype)
        votes.scatter_add_(1, bank_labels[idx], weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


@torch.no_grad()
def embed(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 512,
) -> torch.Tensor:
    """uint8 images [N, C, H, W] (any device) -> features [N, d] float32 on `device`.

    `fn` maps a uint8 batch on `device` to features (it resizes and normalises).
    """
    out = [fn(b.to(device, non_blocking=True)).float() for b in images.split(batch_size)]
    return torch.cat(out)


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
) -> float:
    """Fraction of queries whose kNN prediction equals their label."""
    pred = knn_predict(bank, bank_labels.to(bank.device), queries, num_classes, k, t)
    return float((pred.cpu() == query_labels.cpu()).float().mean())
