"""Figure 1: SimCLR's positive and negative pairs, on real images.

Each row is one anchor: view 1 of an image. Its positive is view 2 of the same image
(another random crop/jitter/grey made by contrastkit.training.augment's SimCLR view); its negatives
are the views of every other image in the batch. The loss for the anchor is
-log softmax(s/τ)[positive] over all 2B-1 candidates. Labels play no part, so the most
similar negative is often an image of the same class: a "false negative".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from contrastkit.training.augment import IMAGENET_MEAN, IMAGENET_STD
from contrastkit.training.demo.style import NEGATIVE, POSITIVE, pyplot, save

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@dataclass
class PairRow:
    """One anchor (view 1 of image `index`) and the tiles shown next to it.

    tiles: (image index, view 1 or 2, cosine similarity to the anchor, kind) with kind
    "positive", "hardest negative" or "negative"; loss: the anchor's NT-Xent term at τ.
    """

    index: int
    tiles: list[tuple[int, int, float, str]]
    loss: float


def pair_rows(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, rows: int, tau: float, seed: int = 0
) -> list[PairRow]:
    """z1, z2: unit projections [B, d] of views 1 and 2; labels int64 [B].

    Anchors are the first image of `rows` different classes; each row shows the
    positive, the hardest negative and two random negatives (views of other images).
    """
    batch = z1.shape[0]
    cand = torch.cat([z1, z2])  # candidate c: image c % B, view c // B + 1
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in _one_per_class(labels, rows):
        sims = cand @ z1[i]  # [2B]
        logits = (sims / tau).index_fill(0, torch.tensor([i]), -torch.inf)
        loss = float(-torch.log_softmax(logits, 0)[batch + i])
        is_neg = torch.ones(2 * batch, dtype=torch.bool)
        is_neg[[i, batch + i]] = False
        hardest = int(torch.where(is_neg, sims, -torch.inf).argmax())
        others = [j for j in torch.randperm(batch, generator=gen).tolist() if j != i][:2]
        tiles = [
            (i, 2, float(sims[batch + i]), "positive"),
            (hardest % batch, hardest // batch + 1, float(sims[hardest]), "hardest negative"),
        ]
        tiles += [(j, 2, float(sims[batch + j]), "negative") for j in others]  # fmt: skip
        out.append(PairRow(i, tiles, loss))
    return out


def _one_per_class(labels: torch.Tensor, rows: int) -> list[int]:
    seen: dict[int, int] = {}
    for idx, lab in enumerate(labels.tolist()):
        seen.setdefault(lab, idx)
    return sorted(seen.values())[:rows]


def to_display(x: torch.Tensor) -> np.ndarray:
    """A normalised view float [3, h, w] -> RGB in [0, 1], [h, w, 3], for imshow."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def plot_pairs(
    rows: list[PairRow],
    originals: torch.Tensor,
    views: tuple[torch.Tensor, torch.Tensor],
    class_names: list[str],
    labels: torch.Tensor,
    tau: float,
    path: Path,
) -> Path:
    """originals: eval views [B, 3, s, s] (unaugmented); views: (view 1, view 2) [B, 3, s, s]."""
    plt = pyplot()
    ncols = 2 + len(rows[0].tiles)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.75 * ncols + 0.6, 2.0 * len(rows) + 1.0),
                             layout="constrained", squeeze=False)  # fmt: skip
    for r, row in enumerate(rows):
        name = class_names[int(labels[row.index])]
        _tile(axes[r, 0], to_display(originals[row.index]), f"image: {name}", None)
        _tile(axes[r, 1], to_display(views[0][row.index]), f"anchor (view 1)\nℓ = {row.loss:.2f}",
              "black")  # fmt: skip
        for c, (j, v, sim, kind) in enumerate(row.tiles, start=2):
            color = POSITIVE if kind == "positive" else NEGATIVE
            text = f"{kind}\nview {v} of {class_names[int(labels[j])]}\ns = {sim:.2f}"
            _tile(axes[r, c], to_display(views[v - 1][j]), text, color)
    fig.suptitle(
        "SimCLR pairs: the anchor's other view is its positive; views of other images are "
        f"negatives\n(s = cosine similarity of trained projections; ℓ = the anchor's NT-Xent "
        f"term at τ = {tau:g})"
    )
    return save(fig, path)


def _tile(ax: Axes, image: np.ndarray, label: str, frame: str | None) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(label, fontsize=9, color=frame or "black")
    for side in ax.spines.values():
        side.set_visible(frame is not None)
        if frame is not None:
            side.set_color(frame)
            side.set_linewidth(4)
