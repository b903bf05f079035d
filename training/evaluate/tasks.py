"""The feature-based tasks: weighted kNN, linear probe, few-shot. Features in, top-1 out.

All take L2-normalised features float32 [n, d] (from `extract_features`) and int64 labels.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from contrastkit.training.evaluate.defaults import FEWSHOT_L2
from contrastkit.training.evaluate.knn import knn_accuracy
from contrastkit.training.evaluate.logreg import L2_GRID, fit_logreg, select_l2, standardiser


@dataclass
class KnnResult:
    top1: float
    k: int
    t: float


@dataclass
class LinearResult:
    """top1 on the test features with the chosen penalty `l2`, refitted on all train rows."""

    top1: float
    l2: float
    val_top1: dict[str, float]  # l2 (as "%.3g") -> accuracy on the validation split
    n_train: int
    n_val: int


@dataclass
class FewShotResult:
    """Test top-1 over seeds: mean and sample standard deviation (0 for one seed)."""

    shots: int
    mean: float
    std: float
    runs: list[float] = field(default_factory=list)


def knn_task(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
    query_labels: torch.Tensor, num_classes: int, k: int = 200, t: float = 0.1,
) -> KnnResult:  # fmt: skip
    """Weighted kNN (contrastkit.training.evaluate.knn): each of the k nearest votes exp(cos /
    t)."""
    acc = knn_accuracy(bank, bank_labels, queries, query_labels, num_classes, k=k, t=t)
    return KnnResult(acc, k, t)


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    num_classes: int, *, grid: tuple[float, ...] = L2_GRID, val_fraction: float = 0.2,
    seed: int = 0, device: torch.device | None = None,
) -> LinearResult:  # fmt: skip
    """Logistic regression on frozen features, its L2 strength chosen on a validation split.

    Features are standardised with the train rows' statistics first, so one grid of
    strengths suits every encoder whatever its feature scale.
    """
    device = device or train_x.device
    mean, std = standardiser(train_x)
    tx = ((train_x - mean) / std).to(device)
    qx = ((test_x - mean) / std).to(device)
    ty = train_y.to(device)
    l2, scores = select_l2(tx, ty, num_classes, grid, val_fraction, seed)
    model = fit_logreg(tx, ty, num_classes, l2)
    n_val = max(1, round(len(train_y) * val_fraction))
    return LinearResult(
        top1=model.accuracy(qx, test_y), l2=l2,
        val_top1={f"{k:.3g}": v for k, v in scores.items()},
        n_train=len(train_y) - n_val, n_val=n_val,
    )  # fmt: skip


def sample_shots(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """int64 indices: `shots` random rows of every class present (all rows if fewer)."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        picked.append(rows[torch.randperm(len(rows), generator=gen)[:shots]])
    return torch.cat(picked).sort().values


def few_shot(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    num_classes: int, shots: Sequence[int] = (1, 5, 10), seeds: int = 5,
    l2: float = FEWSHOT_L2, device: torch.device | None = None,
) -> list[FewShotResult]:  # fmt: skip
    """For each k in `shots`: logistic regression on k examples a class, over `seeds` draws.

    Features are centred on the mean of all train features (unlabelled statistics, which
    a few-shot learner may use) and re-normalised: "CL2N" (Wang et al. 2019, SimpleShot),
    which helps every linear few-shot classifier.
    """
    device = device or train_x.device
    centre = train_x.mean(dim=0)
    tx = F.normalize(train_x - centre, dim=1).to(device)
    qx = F.normalize(test_x - centre, dim=1).to(device)
    results = []
    for k in shots:
        if k < 1:
            raise ValueError(f"shots must be >= 1, got {k}")
        runs = []
        for seed in range(seeds):
            idx = sample_shots(train_y, k, seed).to(device)
            model = fit_logreg(tx[idx], train_y.to(device)[idx], num_classes, l2)
            runs.append(model.accuracy(qx, test_y))
        std = statistics.stdev(runs) if len(runs) > 1 else 0.0
        results.append(FewShotResult(k, statistics.fmean(runs), std, runs))
    return results
