"""Figures 3 and 4: the embedding space before and after training.

Both use the backbone features (what kNN evaluation and export use) of held-out images
the model never trained on. Figure 3 is the similarity matrix of a class-sorted batch:
training should make same-class blocks on the diagonal stand out. It shows the cosine of
features centred on the batch mean: ReLU features share a large common component (raw
cosines are all above 0.95 here), which hides the structure the ranking-based kNN sees.
Figure 4 is a 2-D map (t-SNE, or UMAP when the `umap` package is installed) coloured by
class.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from contrastkit.training.demo.model import cosine_matrix
from contrastkit.training.demo.style import class_colors, pyplot, save

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def class_sorted_batch(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Indices int64 [<= C*per_class]: the first `per_class` items of each class, by class."""
    picks = [torch.nonzero(labels == c).flatten()[:per_class] for c in labels.unique().tolist()]
    return torch.cat(picks)


@dataclass
class BlockStats:
    """Mean cosine similarity of distinct same-class pairs and of different-class pairs."""

    within: float
    between: float

    @property
    def gap(self) -> float:
        return self.within - self.between


def block_stats(sim: torch.Tensor, labels: torch.Tensor) -> BlockStats:
    """sim [N, N] (cosine), labels [N] -> within/between-class means (diagonal excluded)."""
    same = labels[:, None] == labels[None, :]
    off_diag = ~torch.eye(len(labels), dtype=torch.bool)
    return BlockStats(float(sim[same & off_diag].mean()), float(sim[~same].mean()))


def plot_heatmaps(
    feats: dict[str, torch.Tensor], labels: torch.Tensor, class_names: list[str], path: Path
) -> tuple[Path, dict[str, BlockStats]]:
    """feats: {panel title: features [N, d]} of the same class-sorted images (labels [N]).
    Returns the path and each panel's within/between-class means of the centred cosine."""
    plt = pyplot()
    sims = {k: cosine_matrix(v - v.mean(0)) for k, v in feats.items()}
    fig, axes = plt.subplots(1, len(sims), figsize=(6.2 * len(sims) + 1.2, 6.6),
                             layout="constrained", squeeze=False)  # fmt: skip
    stats = {}
    image: Any = None
    for ax, (title, sim) in zip(axes[0], sims.items(), strict=True):
        stats[title] = block_stats(sim, labels)
        image = ax.imshow(sim.numpy(), cmap="RdBu_r", vmin=-1.0, vmax=1.0,
                          interpolation="nearest")  # fmt: skip
        _class_ticks(ax, labels, class_names)
        s = stats[title]
        ax.set_title(f"{title}\nmean: same class {s.within:.2f}, different classes {s.between:.2f}")
    label = "cosine similarity of mean-centred features"
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label=label)
    fig.suptitle(f"Feature similarity of {len(labels)} held-out images, sorted by class")
    return save(fig, path), stats


def _class_ticks(ax: Axes, labels: torch.Tensor, class_names: list[str]) -> None:
    """Class names at the middle of each block; thin lines at the block edges."""
    bounds = (torch.nonzero(labels[1:] != labels[:-1]).flatten() + 1).tolist()
    edges = [0, *bounds, len(labels)]
    mids = [(a + b - 1) / 2 for a, b in itertools.pairwise(edges)]
    names = [class_names[int(labels[a])] for a in edges[:-1]]
    for b in bounds:
        ax.axhline(b - 0.5, color="black", lw=0.5)
        ax.axvline(b - 0.5, color="black", lw=0.5)
    ax.set_xticks(mids, names, rotation=90)
    ax.set_yticks(mids, names)
    ax.set_xlabel("image (grouped by class)")
    ax.set_ylabel("image (grouped by class)")


def project_2d(feats: torch.Tensor, seed: int = 0) -> tuple[np.ndarray, str]:
    """Features [N, d] -> (2-D coordinates [N, 2], method name): UMAP when installed,
    else scikit-learn's t-SNE (PCA initialisation, perplexity 30)."""
    x = torch.nn.functional.normalize(feats.float(), dim=1).numpy()
    try:
        import umap

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
    except ImportError:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        perplexity = min(30.0, (len(x) - 1) / 3)
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        # One OpenMP thread: on a busy 2-core machine the threaded Barnes-Hut loop spins
        # and takes 10-30x longer than a single thread does.
        with threadpool_limits(limits=1, user_api="openmp"):
            return tsne.fit_transform(x), "t-SNE"


def plot_maps(
    coords: dict[str, np.ndarray],
    labels: torch.Tensor,
    class_names: list[str],
    how: str,
    path: Path,
) -> Path:
    """coords: {panel title: [N, 2]} of the same images (labels [N]); one shared legend."""
    plt = pyplot()
    colors = class_colors(len(class_names))
    fig, axes = plt.subplots(1, len(coords), figsize=(6.0 * len(coords) + 1.8, 6.0),
                             layout="constrained", squeeze=False)  # fmt: skip
    lab = labels.numpy()
    for ax, (title, xy) in zip(axes[0], coords.items(), strict=True):
        for c, name in enumerate(class_names):
            pts = xy[lab == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=9, color=colors[c], label=name, alpha=0.8)
        _label_clusters(ax, xy, lab, class_names, colors)
        ax.set_title(title)
        ax.set_xlabel(f"{how} 1")
        ax.set_ylabel(f"{how} 2")
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right center", title="class", markerscale=2.5)
    fig.suptitle(f"{how} map of the features of {len(lab)} held-out images, coloured by class "
                 "(a name marks a class that forms a cluster)")  # fmt: skip
    return save(fig, path)


def _label_clusters(
    ax: Axes, xy: np.ndarray, lab: np.ndarray, class_names: list[str], colors: list[Any]
) -> None:
    """A class's name at its points' median when the class forms a cluster there (most of
    the 10 points nearest the median are its own) and no other name sits close by, so
    the map reads without the legend and mixed classes get no misleading label."""
    import matplotlib.patheffects as pe

    halo = [pe.withStroke(linewidth=3, foreground="white")]
    span = np.ptp(xy, axis=0) + 1e-12
    placed: list[np.ndarray] = []
    for c, name in enumerate(class_names):
        if not (lab == c).any():
            continue
        centre = np.median(xy[lab == c], axis=0)
        nearest = np.argsort(((xy - centre) ** 2).sum(1))[:10]
        crowded = any(np.all(np.abs(centre - p) / span < (0.12, 0.05)) for p in placed)
        if (lab[nearest] == c).mean() >= 0.6 and not crowded:
            placed.append(centre)
            ax.text(centre[0], centre[1], name, fontsize=9, ha="center", va="center",
                    color=colors[c], weight="bold", path_effects=halo)  # fmt: skip
