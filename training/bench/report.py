"""`contrastive bench train`'s ratios and its printed tables.

Every ratio is stored with both of its terms, figure / reference, measured in the same
run: `comparisons(result)` derives them from the result's sections, so the JSON and the
table can never disagree.
"""

from __future__ import annotations

import operator
from typing import Any

from contrastkit.training.encoders.environment import markdown_table

# name -> (relation, bound) for the targets PERFORMANCE.md sets (on a GPU)
TARGETS = {
    "end_to_end/step_only": (">=", 0.8),
    "moco/simclr step time": ("<=", 1.3),
    "byol/simclr step time": ("<=", 1.3),
}
_OPS = {">=": operator.ge, "<=": operator.le}


def pick_default(value: Any, cuda: Any, cpu: Any, quick: Any, on_cuda: bool, is_quick: bool) -> Any:
    """A bench setting: the flag's value when given, else the default for --quick, for
    CUDA, or for the CPU."""
    if value is not None:
        return value
    return quick if is_quick else cuda if on_cuda else cpu


def _comparison(
    name: str, label: str, figure: float, reference: float, unit: str, ref_label: str
) -> dict[str, Any]:
    target = TARGETS.get(name)
    ratio = figure / reference
    return {
        "name": name,
        "label": label,
        "figure": figure,
        "reference": reference,
        "reference_label": ref_label,
        "unit": unit,
        "ratio": ratio,
        "target": f"{target[0]} {target[1]}" if target else None,
        "meets_target": _OPS[target[0]](ratio, target[1]) if target else None,
    }


def comparisons(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's ratios, each as {name, figure, reference, ratio = figure / reference, ...}."""
    a, b, c = result["step_only"], result["end_to_end"], result["peer"]
    out = [
        _comparison(
            "end_to_end/step_only",
            "(b) end to end",
            b["img_per_s"],
            a["img_per_s"],
            "img/s",
            "(a) step only",
        ),
        _comparison(
            "end_to_end/peer",
            "(b) end to end",
            b["img_per_s"],
            c["img_per_s"],
            "img/s",
            f"(c) peer, {c['workers']} workers",
        ),
    ]
    simclr = result["methods"]["simclr"]["median_step_s"]
    for m, fig in result["methods"].items():
        if m != "simclr":
            out.append(
                _comparison(
                    f"{m}/simclr step time",
                    f"(d) {m} step",
                    fig["median_step_s"],
                    simclr,
                    "s/step",
                    "simclr step",
                )
            )
    knn = result.get("knn")
    if knn and knn.get("final_top1") is not None:
        label = f"(e) kNN top-1 after {knn['epochs_done']:g} epochs"
        out.append(
            _comparison(
                "knn/raw_pixels",
                label,
                knn["final_top1"],
                knn["raw_pixel_top1"],
                "top-1",
                "kNN on raw pixels",
            )
        )
    return out


def _fmt(value: float, unit: str) -> str:
    if unit == "img/s":
        return f"{value:,.0f} img/s" if value >= 100 else f"{value:.1f} img/s"
    if unit == "s/step":
        return f"{1000 * value:.1f} ms/step"
    return f"{value:.4f}"


def throughput_table(result: dict[str, Any]) -> str:
    a = result["step_only"]
    rows: list[list[Any]] = [
        ["(a) simclr step only", _fmt(a["img_per_s"], "img/s"), "", "", "", ""]
    ]
    for c in result["comparisons"]:
        met = "" if c["meets_target"] is None else (" (met)" if c["meets_target"] else " (missed)")
        rows.append(
            [
                c["label"],
                _fmt(c["figure"], c["unit"]),
                c["reference_label"],
                _fmt(c["reference"], c["unit"]),
                f"{c['ratio']:.2f}",
                (c["target"] or "") + met,
            ]
        )
    cols = ["figure", "value", "reference (same run)", "reference value", "ratio", "target"]
    return markdown_table(cols, rows)


def knn_table(knn: dict[str, Any]) -> str:
    rows = [
        [r["epoch"], f"{r['top1']:.4f}", f"{r['train_seconds']:.1f}", f"{r['wall_seconds']:.1f}"]
        for r in knn["per_epoch"]
    ]
    return markdown_table(["epoch", "kNN top-1", "train s", "wall s"], rows)


def print_report(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(
        f"\ncontrastive bench train: {result['device_name']} ({result['device']}), "
        f"torch {result['torch']}, CUDA {result['cuda']}, commit {result['git_commit']}, "
        f"{result['date']}"
    )
    print(
        f"data {s['data']}, {s['backbone']}, batch {s['batch_size']}, {s['image_size']} px, "
        f"precision {s['precision']}, {s['rounds']} rounds\n"
    )
    print(throughput_table(result))
    knn = result.get("knn")
    if not knn:
        return
    print(
        f"\nSimCLR with online kNN (k={knn['k']}, t={knn['t']}; bank {knn['bank']}, "
        f"queries {knn['queries']}); stopped: {knn['stopped']}\n"
    )
    print(knn_table(knn))
    hit = knn["time_to_target_train_s"]
    reach = (
        f"reached {knn['target']} at epoch {knn['epoch_of_target']} after {hit:.1f} s of "
        f"training ({knn['time_to_target_wall_s']:.1f} s wall)"
        if hit is not None
        else f"did not reach {knn['target']}"
    )
    untrained = knn["untrained_top1"]
    shown = "n/a" if untrained is None else f"{untrained:.4f}"
    print(
        f"\n{reach}; references: raw pixels {knn['raw_pixel_top1']:.4f}, untrained encoder "
        f"{shown}; {knn['images_per_second']:,.0f} img/s in training"
    )
