"""Draw the demo's five figures from a finished DemoRun."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contrastkit.training.demo.analysis import anchor_similarities, median_anchor
from contrastkit.training.demo.curves import plot_curves
from contrastkit.training.demo.embeddings import BlockStats, plot_heatmaps, plot_maps
from contrastkit.training.demo.pairs import pair_rows, plot_pairs
from contrastkit.training.demo.pipeline import DemoRun
from contrastkit.training.demo.temperature import (
    TemperatureData,
    plot_temperature,
    temperature_data,
)

FILES = {
    "pairs": "1_pairs.png",
    "temperature": "2_temperature.png",
    "heatmap": "3_similarity_heatmap.png",
    "map": "4_embedding_map.png",
    "curves": "5_training_curves.png",
}
PAIR_ROWS = 5


@dataclass
class Drawn:
    """The figures' paths and the numbers they show that the summary repeats."""

    paths: dict[str, Path]
    temperature: TemperatureData
    blocks: dict[str, BlockStats]  # keys "before", "after"


def draw_all(demo: DemoRun, out: Path) -> Drawn:
    data, cfg = demo.data, demo.cfg
    tau = float(cfg.method_params["temperature"])
    z1, z2 = demo.after.z
    rows = pair_rows(z1, z2, data.batch_labels, PAIR_ROWS, tau, seed=cfg.seed)
    paths = {"pairs": plot_pairs(rows, data.originals, data.views, data.classes,
                                 data.batch_labels, tau, out / FILES["pairs"])}  # fmt: skip
    sims, pos = anchor_similarities(z1, z2, median_anchor(z1, z2, tau))
    temp = temperature_data(sims, pos, demo.before.z, demo.after.z, tau)
    paths["temperature"] = plot_temperature(temp, out / FILES["temperature"])
    titles = {"before": "random initialisation (before)",
              "after": f"after {demo.steps} SimCLR steps"}  # fmt: skip
    heat = {titles[k]: a.heat_features for k, a in (("before", demo.before), ("after", demo.after))}
    paths["heatmap"], stats = plot_heatmaps(heat, data.heat_labels, data.classes,
                                            out / FILES["heatmap"])  # fmt: skip
    coords = {f"{titles['before']}\nkNN top-1 {demo.before.knn:.3f}": demo.before.map_xy,
              f"{titles['after']}\nkNN top-1 {demo.after.knn:.3f}": demo.after.map_xy}  # fmt: skip
    paths["map"] = plot_maps(coords, data.map_labels, data.classes, demo.after.map_how,
                             out / FILES["map"])  # fmt: skip
    paths["curves"] = plot_curves(demo.run_dir, out / FILES["curves"], knn_start=demo.before.knn)
    blocks = {"before": stats[titles["before"]], "after": stats[titles["after"]]}
    return Drawn(paths, temp, blocks)
