"""Did fine-tuning make it better? Held-out metrics of a run's start and end, side by side.

A CLIP run scores its held-out data twice with `evaluate_heldout` (its model before the
first step and after the last, e.g. through `MethodEncoder`), and `before_after_report`
turns the two metric dicts into one report: each metric's change, and a verdict on the
mean of all of them ("better" when the mean rose). It is written as
eval_before_after.json and eval_before_after.md, and printed with `before_after_lines`.

Metrics: caption data -> image->text and text->image recall@1/5/10 (`retrieval`);
labelled data -> zero-shot top-1 with the template ensemble (`zero_shot`).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, cast

from contrastkit.training.encoders import Encoder
from contrastkit.training.encoders.environment import markdown_table, write_json, write_text
from contrastkit.training.evaluate.data import EvalData
from contrastkit.training.evaluate.method_encoder import MethodEncoder
from contrastkit.training.evaluate.pixels import extract_features
from contrastkit.training.evaluate.retrieval import retrieval
from contrastkit.training.evaluate.zeroshot import zero_shot

__all__ = [
    "JSON_NAME",
    "MARKDOWN_NAME",
    "MethodEncoder",
    "before_after_lines",
    "before_after_markdown",
    "before_after_report",
    "evaluate_heldout",
    "write_before_after",
]

RECALL_KS = (1, 5, 10)
JSON_NAME = "eval_before_after.json"
MARKDOWN_NAME = "eval_before_after.md"


def evaluate_heldout(encoder: Encoder, data: EvalData, batch_size: int = 256) -> dict[str, float]:
    """The held-out metrics of `encoder` on `data`, each in [0, 1].

    Caption data: {"i2t_recall@K", "t2i_recall@K"} for K in 1, 5, 10. Labelled data:
    {"zeroshot_top1"} (the template ensemble), with "_" in class names read as spaces,
    as CLIP's training captions write them ("golden_retriever" -> "golden retriever").
    """
    features = extract_features(encoder, data.queries, batch_size, "embed held-out")  # [N, d]
    if data.captions is not None:
        found = retrieval(encoder, features, data.captions, RECALL_KS, batch_size)
        sides = {side: cast(dict[str, float], found[side]) for side in ("i2t", "t2i")}
        return {f"{side}_recall@{k}": float(recalls[f"recall@{k}"])
                for side, recalls in sides.items() for k in RECALL_KS}  # fmt: skip
    names = [c.replace("_", " ") for c in data.classes]
    result = zero_shot(encoder, features, data.query_labels, names, ("ensemble",))
    return {"zeroshot_top1": result["ensemble"].top1}


def before_after_report(
    before: dict[str, float], after: dict[str, float], *, start: str, end: str
) -> dict[str, Any]:
    """Two metric dicts with the same keys -> the JSON-able report:
    {"start", "end", "metrics": [{"name", "before", "after", "diff"}], "better",
    "headline": {"name", "before", "after", "diff"}}; diff = after - before, the
    headline is the mean over the metrics, and "better" is True when it rose.

    Raises ValueError when the key sets differ (the two evaluations must be alike) or
    are empty.
    """
    if set(before) != set(after):
        raise ValueError(f"before has {sorted(before)}, after has {sorted(after)}")
    if not before:
        raise ValueError("no metrics to compare")
    metrics = [_row(name, before[name], after[name]) for name in before]
    mean = _row(
        f"mean of {len(metrics)} metric{'s' if len(metrics) > 1 else ''}",
        statistics.fmean(before.values()),
        statistics.fmean(after[name] for name in before),
    )
    return {"start": start, "end": end, "metrics": metrics, "better": mean["diff"] > 0,
            "headline": mean}  # fmt: skip


def _row(name: str, before: float, after: float) -> dict[str, Any]:
    return {"name": name, "before": float(before), "after": float(after),
            "diff": float(after) - float(before)}  # fmt: skip


def verdict_sentence(report: dict[str, Any]) -> str:
    """One sentence: did the end improve on the start, judged by the headline mean."""
    h = report["headline"]
    change = f"{h['name']} {h['before']:.4f} → {h['after']:.4f} ({h['diff']:+.4f})"
    if report["better"]:
        return f"`{report['end']}` improved on `{report['start']}`: {change}."
    return f"`{report['end']}` did not improve on `{report['start']}`: {change}."


def _cells(report: dict[str, Any]) -> list[list[str]]:
    """[metric, before, after, signed difference] per metric, then the headline mean."""
    rows = [*report["metrics"], report["headline"]]
    return [[r["name"], f"{r['before']:.4f}", f"{r['after']:.4f}", f"{r['diff']:+.4f}"]
            for r in rows]  # fmt: skip


def _columns(report: dict[str, Any]) -> list[str]:
    return ["metric", f"start: {report['start']}", f"end: {report['end']}", "difference"]


def before_after_markdown(report: dict[str, Any]) -> str:
    """The table (a row per metric, the mean last) and the verdict sentence."""
    return markdown_table(_columns(report), _cells(report)) + "\n\n" + verdict_sentence(report)


def before_after_lines(report: dict[str, Any]) -> list[str]:
    """Console lines: the same table as plain text, columns aligned, then the verdict."""
    table = [_columns(report), *_cells(report)]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [_aligned(row, widths) for row in table]
    return [*lines, verdict_sentence(report).replace("`", "")]


def _aligned(row: list[str], widths: list[int]) -> str:
    # names left-aligned, numbers right-aligned so that their decimal points line up
    numbers = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
    return "  ".join([row[0].ljust(widths[0]), *numbers]).rstrip()


def write_before_after(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write out_dir/eval_before_after.json and .md, each atomically; returns both paths."""
    out = Path(out_dir)
    json_path = write_json(out / JSON_NAME, report)
    md_path = write_text(out / MARKDOWN_NAME, before_after_markdown(report) + "\n")
    return json_path, md_path
