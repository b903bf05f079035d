"""summary.md (for people) and summary.json (for scripts and tests) of a demo run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from contrastkit.training.demo.figures import Drawn
from contrastkit.training.demo.pipeline import DemoRun
from contrastkit.training.demo.temperature import LOSS_TAUS, TAUS


def numbers(demo: DemoRun, drawn: Drawn) -> dict[str, Any]:
    """Every number the summary states, as plain JSON values."""
    cfg, t = demo.cfg, drawn.temperature
    return {
        "data": cfg.data, "method": cfg.method, "backbone": cfg.backbone,
        "image_size": cfg.image_size, "batch_size": cfg.batch_size,
        "temperature": float(cfg.method_params["temperature"]),
        "steps": demo.steps, "threads": demo.threads,
        "train_seconds": round(demo.train_seconds, 1),
        "total_seconds": round(time.perf_counter() - demo.started, 1),
        "knn": {"k": cfg.knn_k, "t": cfg.knn_t, "before": demo.before.knn,
                "after": demo.after.knn, "raw_pixels": demo.data.pixel_knn},
        "nt_xent": {"before": {str(k): v for k, v in demo.before.loss_at.items()},
                    "after": {str(k): v for k, v in demo.after.loss_at.items()}},
        "cosine": {k: {"same_class": b.within, "different_class": b.between}
                   for k, b in drawn.blocks.items()},
        "anchor_positive_rank": int((t.sims > t.sims[t.pos]).sum()) + 1,
        "anchor_candidates": len(t.sims),
        "anchor_p_positive": {str(tau): float(t.probs[tau][t.pos]) for tau in TAUS},
        "hard_negative_share": {str(tau): t.hard[tau] for tau in TAUS},
        "map": demo.after.map_how,
        "figures": {k: p.name for k, p in drawn.paths.items()},
    }  # fmt: skip


def markdown(n: dict[str, Any]) -> str:
    """summary.md: what was run, the numbers before and after, and the figures."""
    k, nt, cos = n["knn"], n["nt_xent"], n["cosine"]
    loss_cells = " / ".join(f"{nt['before'][str(t)]:.2f}" for t in LOSS_TAUS)
    loss_after = " / ".join(f"{nt['after'][str(t)]:.2f}" for t in LOSS_TAUS)
    taus = ", ".join(f"{t:g}" for t in LOSS_TAUS)
    hard = ", ".join(f"{100 * n['hard_negative_share'][str(t)]:.0f}% at τ={t:g}" for t in TAUS)
    p_pos = ", ".join(f"{n['anchor_p_positive'][str(t)]:.3f} at τ={t:g}" for t in TAUS)
    f = n["figures"]
    return f"""# Contrastive learning demo: SimCLR on {n["data"]}

{n["method"]} with the `{n["backbone"]}` backbone, {n["image_size"]}px views, batch \
{n["batch_size"]}, τ = {n["temperature"]:g}: {n["steps"]} steps in {n["train_seconds"]:.0f} s \
of training on {n["threads"]} CPU thread(s) ({n["total_seconds"]:.0f} s for the whole demo). \
Every number below is measured on held-out images the model never trained on.

| | random init (before) | after {n["steps"]} steps |
|---|---|---|
| kNN top-1 (k={k["k"]}, t={k["t"]:g}) | {k["before"]:.3f} | {k["after"]:.3f} |
| NT-Xent of one batch at τ = {taus} | {loss_cells} | {loss_after} |
| mean cosine of centred features, same class | {cos["before"]["same_class"]:.3f} | \
{cos["after"]["same_class"]:.3f} |
| mean cosine of centred features, different classes | {cos["before"]["different_class"]:.3f} | \
{cos["after"]["different_class"]:.3f} |

For reference, the same kNN on raw pixels scores {k["raw_pixels"]:.3f}: a minute of training \
a tiny network shows the mechanism; it does not make a strong encoder.

Temperature, for a typical anchor of the trained model (the median loss in the batch; its \
positive ranks {n["anchor_positive_rank"]} of {n["anchor_candidates"]} candidates by \
similarity): the softmax weight of its positive is {p_pos}; the 5% most similar \
negatives receive {hard} of the repulsive gradient (5% each would be an even split).

Figures:
1. `{f["pairs"]}`: positive pairs (two views of one image) next to negatives (views of \
other images), with their cosine similarities after training.
2. `{f["temperature"]}`: the softmax over one anchor's candidates at several τ, the loss \
as a function of τ, and how τ reweights hard negatives.
3. `{f["heatmap"]}`: feature similarity of a class-sorted batch, before and after.
4. `{f["map"]}`: a {n["map"]} map of the features, coloured by class, before and after.
5. `{f["curves"]}`: loss, learning rate and kNN accuracy of the run (from metrics.jsonl).
"""


def write(demo: DemoRun, drawn: Drawn, out: Path) -> dict[str, Any]:
    """Write summary.json and summary.md into `out`; returns the numbers."""
    n = numbers(demo, drawn)
    (out / "summary.json").write_text(json.dumps(n, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(n))
    return n
