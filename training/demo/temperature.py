"""Figure 2: what the temperature τ does to the NT-Xent loss.

For one anchor with cosine similarities s_j to its 2B-1 candidates (one positive), the
loss is -log p_pos with p_j = exp(s_j/τ) / Σ_k exp(s_k/τ). Its gradient with respect to
a negative's similarity is ∂L/∂s_j = p_j / τ, so negative j is pushed away in
proportion to exp(s_j/τ): a small τ concentrates the push on the hardest (most similar)
negatives, a large τ spreads it evenly. `temperature_data` computes exactly the numbers
the figure draws, so a test can check them against the closed form.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from contrastkit.training.demo.style import AFTER, BEFORE, POSITIVE, pyplot, save
from contrastkit.training.losses import nt_xent

if TYPE_CHECKING:
    from matplotlib.axes import Axes

TAUS = (0.1, 0.2, 0.5, 1.0)
LOSS_TAUS = (0.05, 0.1, 0.2, 0.5, 1.0)
HARD_FRACTION = 0.05  # "hard negatives": the most similar 5% of an anchor's negatives


def softmax_weights(sims: torch.Tensor, tau: float) -> torch.Tensor:
    """Cosine similarities [n] -> softmax(s / τ) [n] (float64 for the figure's numbers)."""
    return torch.softmax(sims.double() / tau, dim=0)


def negative_weights(neg_sims: torch.Tensor, tau: float) -> torch.Tensor:
    """Similarities of one anchor's negatives [m] -> the gradient weight each gets,
    relative to an even split: (p_j/τ) / mean_k(p_k/τ) = m·softmax(s/τ)_j over the
    negatives. 1 everywhere as τ → ∞; > 1 for hard negatives at small τ."""
    return neg_sims.numel() * softmax_weights(neg_sims, tau)


def hard_share(neg_sims: torch.Tensor, tau: float, fraction: float = HARD_FRACTION) -> float:
    """Share of the total negative gradient that the top `fraction` most similar
    negatives receive at temperature τ."""
    w = softmax_weights(neg_sims, tau)
    k = max(1, round(fraction * neg_sims.numel()))
    return float(w.topk(k).values.sum())


@torch.no_grad()
def loss_curve(z1: torch.Tensor, z2: torch.Tensor, taus: list[float]) -> list[float]:
    """NT-Xent (contrastkit.training.losses.nt_xent) of fixed projections [B, d] at each τ."""
    return [float(nt_xent(z1, z2, t)) for t in taus]


@dataclass
class TemperatureData:
    """Everything figure 2 draws.

    sims: one anchor's cosine similarities to its candidates [n] (float64);
    pos: index of its positive in `sims`; probs[τ]: softmax weights [n];
    neg_weights[τ]: relative gradient weights of the negatives [n-1], in the order of
    `sims` without the positive; hard[τ]: share of the push on the hardest 5%;
    curve_taus + loss_before/loss_after: NT-Xent of a fixed batch of views at each τ.
    """

    sims: torch.Tensor
    pos: int
    probs: dict[float, torch.Tensor]
    neg_weights: dict[float, torch.Tensor]
    hard: dict[float, float]
    curve_taus: list[float]
    loss_before: list[float]
    loss_after: list[float]
    batch: int
    train_tau: float


def temperature_data(
    sims: torch.Tensor,
    pos: int,
    z_before: tuple[torch.Tensor, torch.Tensor],
    z_after: tuple[torch.Tensor, torch.Tensor],
    train_tau: float,
    taus: tuple[float, ...] = TAUS,
) -> TemperatureData:
    """sims [n]: an anchor's similarities (positive at `pos`); z_*: (z1, z2) [B, d]
    projections of one batch's two views by the initial and the trained model."""
    sims = sims.double()
    neg = torch.cat([sims[:pos], sims[pos + 1 :]])
    curve = torch.logspace(-1.3, 0.3, 30).tolist()  # τ from 0.05 to 2
    return TemperatureData(
        sims=sims, pos=pos,
        probs={t: softmax_weights(sims, t) for t in taus},
        neg_weights={t: negative_weights(neg, t) for t in taus},
        hard={t: hard_share(neg, t) for t in taus},
        curve_taus=curve, loss_before=loss_curve(*z_before, curve),
        loss_after=loss_curve(*z_after, curve), batch=int(z_after[0].shape[0]),
        train_tau=train_tau,
    )  # fmt: skip


def plot_temperature(data: TemperatureData, path: Path) -> Path:
    """Three panels: softmax at several τ, loss vs τ, hard-negative weighting."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), layout="constrained")
    colors = plt.get_cmap("viridis")([0.0, 0.35, 0.65, 0.9])
    _softmax_panel(axes[0], data, colors)
    _loss_panel(axes[1], data)
    _hard_negative_panel(axes[2], data, colors)
    fig.suptitle("Temperature τ in the NT-Xent loss (trained model, held-out images)")
    return save(fig, path)


def _softmax_panel(ax: Axes, data: TemperatureData, colors: Any) -> None:
    neg = [j for j in range(len(data.sims)) if j != data.pos]
    s = data.sims.numpy()
    for k, (t, c) in enumerate(zip(data.probs, colors, strict=False)):
        p = data.probs[t].numpy()
        ax.scatter(s[neg], p[neg], s=10, color=c, alpha=0.6)
        # later stars are smaller, so one that lands on an earlier one leaves it visible
        ax.scatter(s[data.pos], p[data.pos], s=300 - 60 * k, marker="*", color=c,
                   edgecolor="black", linewidth=0.8, zorder=3,
                   label=f"τ = {t:g}:  p(positive) = {p[data.pos]:.3f}")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("cosine similarity to the anchor")
    ax.set_ylabel("softmax weight  exp(s/τ) / Σ exp(s/τ)")
    rank = int((data.sims > data.sims[data.pos]).sum()) + 1
    title = f"Softmax over one anchor's {len(data.sims)} candidates: ★ positive (other view,"
    ax.set_title(f"{title}\nrank {rank} by similarity), • negatives (other images)")
    ax.legend(loc="lower right")


def _loss_panel(ax: Axes, data: TemperatureData) -> None:
    import math

    ax.plot(data.curve_taus, data.loss_before, "o-", ms=3, color=BEFORE,
            label="random init")  # fmt: skip
    ax.plot(data.curve_taus, data.loss_after, "o-", ms=3, color=AFTER, label="trained")
    chance = math.log(2 * data.batch - 1)
    ax.axhline(chance, ls="--", color="black", lw=1,
               label=f"uniform softmax: log(2B−1) = {chance:.2f}")  # fmt: skip
    ax.axvline(data.train_tau, ls=":", color=POSITIVE, lw=1.5,
               label=f"τ used in training = {data.train_tau:g}")  # fmt: skip
    ax.set_xscale("log")
    # the loss explodes as τ -> 0; keep the interesting range around the minimum in view
    ax.set_ylim(min(*data.loss_before, *data.loss_after) - 0.3, chance + 2.5)
    ax.set_xlabel("temperature τ (log scale)")
    ax.set_ylabel("NT-Xent loss (nats)")
    ax.set_title(f"NT-Xent of one batch (B = {data.batch}, fixed views) vs τ")
    ax.legend(loc="upper right", framealpha=1.0)


def _hard_negative_panel(ax: Axes, data: TemperatureData, colors: Any) -> None:
    s = torch.cat([data.sims[: data.pos], data.sims[data.pos + 1 :]])
    order = s.argsort()
    for t, c in zip(data.neg_weights, colors, strict=False):
        w = data.neg_weights[t][order].numpy()
        ax.plot(s[order].numpy(), w, "-", lw=2, color=c,
                label=f"τ = {t:g}: top 5% get {100 * data.hard[t]:.0f}% of the push")  # fmt: skip
    ax.axhline(1.0, ls="--", color="black", lw=1, label="even split (τ → ∞)")
    ax.set_yscale("log")
    ax.set_xlabel("negative's cosine similarity to the anchor (harder →)")
    ax.set_ylabel("gradient weight ∂L/∂s, relative to an even split")
    ax.set_title("How τ reweights the same anchor's negatives")
    ax.legend(loc="lower right")
