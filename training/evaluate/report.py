"""Results -> a JSON file and a markdown table (written side by side in --out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contrastkit.training.encoders.environment import markdown_table, timestamp, write_json

TEMPLATE_NAMES = {"ensemble": "template ensemble", "single": "single template"}


SIDES = {"i2t": "image→text", "t2i": "text→image"}


def retrieval_rows(r: dict[str, Any]) -> list[tuple[str, float]]:
    """[(setting, recall)] for a retrieval result: each direction at each K."""
    return [(f"{SIDES[side]} {name}", value) for side in SIDES for name, value in r[side].items()]


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per number: [task, setting, top-1 (recall for retrieval)]."""
    rows = []
    if "retrieval" in results:
        r = results["retrieval"]
        rows += [["retrieval", what, f"{v:.4f}"] for what, v in retrieval_rows(r)]
    if "knn" in results:
        r = results["knn"]
        rows.append(["kNN (weighted)", f"k={r['k']}, τ={r['t']}", f"{r['top1']:.4f}"])
    if "linear" in results:
        r = results["linear"]
        best = r["val_top1"][f"{r['l2']:.3g}"]
        rows.append(
            ["linear probe", f"L2 {r['l2']:.3g} (val top-1 {best:.4f})", f"{r['top1']:.4f}"]
        )
    for name, r in results.get("zeroshot", {}).items():
        n = len(r["templates"])
        what = f"{TEMPLATE_NAMES.get(name, name)} ({n} prompt{'s' if n > 1 else ''})"
        rows.append(["zero-shot", what, f"{r['top1']:.4f}"])
    for r in results.get("fewshot", []):
        seeds = len(r["runs"])
        rows.append(
            [
                "few-shot",
                f"{r['shots']}-shot, {seeds} seed{'s' if seeds > 1 else ''}",
                f"{r['mean']:.4f} ± {r['std']:.4f}",
            ]
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    """A heading line naming model, data and sizes, then the table."""
    if "models" in report:  # several --model: one table, a column per model
        from contrastkit.training.evaluate.compare import comparison_markdown

        return comparison_markdown(report)
    head = (
        f"`{report['model']}` ({report['model_id']}) on `{report['data']}`: "
        f"{report['n_queries']} test images"
        + (f", {report['n_bank']} train images" if report.get("n_bank") else "")
        + captions_note(report["results"])
        + f"; {report['device']}, {report['date']}"
    )
    score = "top-1 / recall" if "retrieval" in report["results"] else "top-1"
    return head + "\n\n" + markdown_table(["task", "setting", score], table_rows(report["results"]))


def captions_note(results: dict[str, Any]) -> str:
    """', N distinct captions' when retrieval ran (the size of its text gallery)."""
    return (
        f", {results['retrieval']['n_texts']} distinct captions" if "retrieval" in results else ""
    )


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write eval-<stamp>.json and eval-<stamp>.md into out_dir; returns both paths."""
    out = Path(out_dir)
    stem = f"eval-{timestamp(report)}"
    json_path = write_json(out / f"{stem}.json", report)
    md_path = out / f"{stem}.md"
    md_path.write_text(markdown(report) + "\n")
    return json_path, md_path
