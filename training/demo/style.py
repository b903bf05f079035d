"""Shared matplotlib set-up: the Agg backend, legible fonts, one way to save a figure.

Figures are saved at their drawn size (no `bbox_inches` shrinking below it and no
later rescaling), so a font of N points in the rc settings is N points in the PNG.
The smallest text is the tick labels at 9 pt.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110
MIN_FONT_PT = 9
RC: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": MIN_FONT_PT,
    "ytick.labelsize": MIN_FONT_PT,
    "legend.fontsize": MIN_FONT_PT,
    "legend.title_fontsize": 10,
    "figure.titlesize": 13,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "savefig.facecolor": "white",
}
POSITIVE = "#1a9850"  # green: pulled together
NEGATIVE = "#d73027"  # red: pushed apart
BEFORE = "#7f7f7f"  # grey: random initialisation
AFTER = "#1f77b4"  # blue: trained


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display) with our rc settings."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(cast(Any, RC))  # the stubs type rc keys as literals
    return plt


def save(fig: Figure, path: Path) -> Path:
    """Write `fig` as a PNG at DPI and close it; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path


def class_colors(n: int) -> list[Any]:
    """n distinguishable colours (tab10, then tab20 for more classes)."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]
