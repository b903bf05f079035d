"""Figure 5: a run's training curves from RUN/metrics.jsonl (contrastkit.training.engine.metrics).

Records of kind "train" carry the mean loss over the logging window, the learning rate
and method logs; records of kind "knn" carry the online kNN top-1 accuracy. A null
value (a non-finite loss) is left out of the line rather than drawn as zero.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contrastkit.training.demo.style import AFTER, BEFORE, pyplot, save
from contrastkit.training.engine.metrics import read_metrics

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def series(records: list[dict[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` in records of `kind`, skipping missing or null values."""
    pts = [(int(r["step"]), float(r[key])) for r in records
           if r.get("kind") == kind and r.get(key) is not None]  # fmt: skip
    return [s for s, _ in pts], [v for _, v in pts]


def run_title(run: Path) -> str:
    """'simclr, backbone tiny, data digits' from RUN/config.json, or the folder name."""
    try:
        cfg = json.loads((run / "config.json").read_text())
        return f"{run.name}: {cfg['method']}, backbone {cfg['backbone']}, data {cfg['data']}"
    except (OSError, ValueError, KeyError):
        return run.name


def plot_curves(
    run: Path, path: Path, knn_start: float | None = None, title: str | None = None
) -> Path:
    """Loss, learning rate and kNN accuracy against the optimiser step.

    knn_start: an extra kNN point at step 0 (the demo measures the untrained model; the
    run itself evaluates only after each epoch). ValueError when the file has no records.
    """
    records = read_metrics(run)
    if not records:
        raise ValueError(f"{run} has no metrics records")
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), layout="constrained")
    _line(axes[0], *series(records, "train", "loss"), "training loss (mean per log window)")
    axes[0].set_title("Contrastive loss")
    _line(axes[1], *series(records, "train", "lr"), "learning rate")
    axes[1].set_title("Learning-rate schedule (warm-up, then cosine)")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _knn_panel(axes[2], records, knn_start)
    folder = run if run.is_dir() else run.parent
    fig.suptitle(title or f"Training curves — {run_title(folder)}")
    return save(fig, path)


def _line(ax: Axes, steps: list[int], values: list[float], ylabel: str) -> None:
    if steps:
        marker = "o-" if len(steps) <= 60 else "-"  # dots only while they stay apart
        ax.plot(steps, values, marker, ms=3, color=AFTER, label=ylabel)
    else:
        _empty(ax, "no records of this value")
    _step_axis(ax)
    ax.set_ylabel(ylabel)


def _knn_panel(ax: Axes, records: list[dict[str, Any]], knn_start: float | None) -> None:
    steps, acc = series(records, "knn", "knn_top1")
    if knn_start is not None:
        ax.plot([0], [knn_start], "s", ms=8, color=BEFORE, label="before training")
        _value(ax, 0, knn_start, "left", below=True)
        if steps:
            ax.plot([0, steps[0]], [knn_start, acc[0]], ":", color=BEFORE)
    if steps:
        ax.plot(steps, acc, "o-", ms=5, color=AFTER, label="after each epoch and at the end")
        _value(ax, steps[-1], acc[-1], "right")
    if knn_start is not None or steps:
        ax.legend(loc="lower right")
        ax.margins(y=0.15)  # room for the value labels below the title
    else:
        _empty(ax, "no kNN records\n(unlabelled data, or knn_every = 0)")
    _step_axis(ax)
    ax.set_ylabel("kNN top-1 accuracy (held-out)")
    ax.set_title("Online kNN accuracy of the backbone features")


def _step_axis(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimiser step")


def _value(ax: Axes, x: float, y: float, ha: str, below: bool = False) -> None:
    ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, -17 if below else 9),
                ha=ha, fontsize=10)  # fmt: skip


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10)
