"""Multinomial logistic regression on frozen features, fitted with full-batch L-BFGS.

Why our own (torch) rather than scikit-learn's LogisticRegression: the features already
sit in a torch tensor, and on a GPU an ImageNet-sized probe (1.28M x 2048 features) fits
in seconds where scikit-learn's CPU solver takes hours; on the CPU the two agree (the
tests compare them) and cost about the same. The objective is scikit-learn's, scaled:

    mean cross-entropy + (l2 / 2) * ||W||^2        (the bias is not penalised)

which is LogisticRegression(C=1 / (n * l2)).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Ten strengths, log-spaced, for the validation search (features standardised first, so
# one grid suits every encoder): 1e-6 is nearly unregularised, 1 shrinks hard.
L2_GRID: tuple[float, ...] = tuple(float(v) for v in torch.logspace(-6, 0, 10, dtype=torch.float64))
# Below this many multiply-adds per evaluation (rows x features x classes) a CPU fit runs
# on one thread: each L-BFGS step is a handful of tiny ops, and waking an OpenMP team for
# each costs more than the arithmetic (a 100 x 384 x 10 step: 0.45 ms on one thread, 6 ms
# on two when the other core is busy).
SMALL_FIT = 1 << 22


@contextlib.contextmanager
def _threads_for(work: int, device: torch.device) -> Iterator[None]:
    before = torch.get_num_threads()
    if device.type != "cpu" or work >= SMALL_FIT or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class LinearModel:
    """logits = x @ weight + bias; weight float32 [d, C], bias float32 [C]."""

    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, d] -> [n, C]."""
        return x.to(self.weight) @ self.weight + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, d] -> int64 [n] class indices."""
        return self.logits(x).argmax(dim=1)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.predict(x).cpu() == y.cpu()).double().mean())


def fit_logreg(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: float,
    *,
    init: LinearModel | None = None,
    max_iter: int = 500,
) -> LinearModel:
    """Minimise mean CE + l2/2 ||W||^2 over W [d, C], b [C]; x float [n, d], y int64 [n].

    Runs on x's device in float32; `init` warm-starts (a neighbouring l2's solution).
    The problem is strictly convex for l2 > 0, so the optimum does not depend on `init`.
    """
    if l2 <= 0:
        raise ValueError(f"l2 must be positive, got {l2}")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"{x.shape[0]} feature rows but {y.shape[0]} labels")
    x = x.float()
    y = y.to(x.device)
    w = torch.zeros(x.shape[1], num_classes, device=x.device)
    b = torch.zeros(num_classes, device=x.device)
    if init is not None:
        w.copy_(init.weight)
        b.copy_(init.bias)
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad(), _threads_for(x.numel() * num_classes, x.device):
        opt.step(closure)  # type: ignore[no-untyped-call]
    return LinearModel(w.detach(), b.detach())


def standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension (mean [d], std [d]) of x [n, d]; constant dimensions get std 1."""
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random (train, val) partition of range(n): int64 index tensors."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise ValueError(f"{n} training features are too few to hold out a validation split")
    return perm[n_val:], perm[:n_val]


def select_l2(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    grid: tuple[float, ...] = L2_GRID,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[float, dict[float, float]]:
    """(chosen l2, {l2: validation top-1}) fitting on a split of (x [n, d], y [n]).

    The path runs from the strongest penalty to the weakest, each fit warm-started from
    the last (the solutions change smoothly along it). Ties go to the stronger penalty:
    at equal validation accuracy the simpler model generalises at least as well.
    """
    fit_idx, val_idx = split_train_val(x.shape[0], val_fraction, seed)
    fit_idx, val_idx = fit_idx.to(x.device), val_idx.to(x.device)
    scores: dict[float, float] = {}
    model = None
    for l2 in sorted(grid, reverse=True):
        model = fit_logreg(x[fit_idx], y[fit_idx], num_classes, l2, init=model)
        scores[l2] = model.accuracy(x[val_idx], y[val_idx])
    best = max(scores.values())
    chosen = max(l2 for l2, acc in scores.items() if acc == best)
    return chosen, dict(sorted(scores.items()))
