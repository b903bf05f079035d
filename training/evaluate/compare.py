"""Several `--model`s on the same data: one table, a column per model, and a verdict.

The verdict compares one headline number per model, the first of these the run has:
  1. retrieval: the mean of image->text and text->image recall@1 (recall@ the smallest
     --recall-at K when 1 is left out);
  2. zero-shot top-1 (the template ensemble, else the single template);
  3. kNN top-1;  4. linear-probe top-1;  5. few-shot mean top-1 at the most shots.
The higher wins; equal headlines are a tie. The last line gives the command that serves
the winner (a checkpoint must be exported first: the service loads export directories).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from contrastkit.training.encoders.environment import markdown_table
from contrastkit.training.evaluate.models import is_checkpoint_ref
from contrastkit.training.evaluate.report import TEMPLATE_NAMES, captions_note, retrieval_rows

Metric = tuple[str, str, float]  # (task, setting, value)


def metric_rows(results: dict[str, Any]) -> list[Metric]:
    """Every number of one model's results, keyed by settings that do not depend on the
    model (the linear probe's chosen L2 does, so it is left out of the key)."""
    rows: list[Metric] = []
    if "retrieval" in results:
        rows += [("retrieval", what, v) for what, v in retrieval_rows(results["retrieval"])]
    for name, r in results.get("zeroshot", {}).items():
        rows.append(("zero-shot", TEMPLATE_NAMES.get(name, name), r["top1"]))
    if "knn" in results:
        r = results["knn"]
        rows.append(("kNN (weighted)", f"k={r['k']}, τ={r['t']}", r["top1"]))
    if "linear" in results:
        rows.append(("linear probe", "L2 chosen on validation", results["linear"]["top1"]))
    for r in results.get("fewshot", []):
        rows.append(("few-shot", f"{r['shots']}-shot, mean", r["mean"]))
    return rows


def headline(results: dict[str, Any]) -> tuple[str, float] | None:
    """(what, value) of the module docstring's rule, or None when no task ran."""
    if "retrieval" in results:
        mean = results["retrieval"]["mean"]
        return f"mean of image→text and text→image recall@{mean['k']}", mean["recall"]
    zeroshot = results.get("zeroshot", {})
    for name in ("ensemble", "single"):
        if name in zeroshot:
            return f"zero-shot top-1 ({TEMPLATE_NAMES[name]})", zeroshot[name]["top1"]
    if "knn" in results:
        return "kNN top-1", results["knn"]["top1"]
    if "linear" in results:
        return "linear-probe top-1", results["linear"]["top1"]
    if results.get("fewshot"):
        most = results["fewshot"][-1]
        return f"few-shot top-1 ({most['shots']}-shot mean)", most["mean"]
    return None


def serve_command(ref: str, pretrained: str | None = None) -> str:
    """The shell command that serves model `ref` with `contrastive serve`."""
    if is_checkpoint_ref(ref):
        path = Path(ref).expanduser()
        export = (path if path.is_dir() else path.parent) / "export"
        return (
            f"contrastive export {shlex.quote(ref)} {shlex.quote(str(export))} && "
            f"contrastive serve --model {shlex.quote(str(export))}"
        )
    extra = f" --pretrained {shlex.quote(pretrained)}" if pretrained else ""
    return f"contrastive serve --model {shlex.quote(ref)}{extra}"


def verdict(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """{"rule", "scores", "better" (a --model value, or None for a tie), "serve"}: the
    headline of every model and the one that scored highest. Only tasks that every model
    ran count (an image-only model has no zero-shot to weigh against another's)."""
    shared = set.intersection(*(set(r["results"]) for r in reports))
    found = [headline({t: r["results"][t] for t in shared}) for r in reports]
    if any(f is None for f in found):
        return {"rule": None, "scores": [], "better": None, "serve": None}
    scores = [f[1] for f in found if f is not None]
    best = max(scores)
    winners = [r for r, s in zip(reports, scores, strict=True) if s == best]
    better = winners[0] if len(winners) == 1 else None
    return {
        "rule": found[0][0] if found[0] else None,
        "scores": scores,
        "better": better["model"] if better else None,
        "serve": serve_command(better["model"], better["pretrained"]) if better else None,
    }


def comparison_rows(reports: list[dict[str, Any]]) -> list[list[str]]:
    """[task, setting, value per model (, B − A for two models)] for every shared number."""
    per_model = [{(t, s): v for t, s, v in metric_rows(r["results"])} for r in reports]
    keys = [(t, s) for m in per_model for t, s in m]  # every model's rows, first seen first
    rows = []
    for task, setting in dict.fromkeys(keys):
        values = [m.get((task, setting)) for m in per_model]
        row = [task, setting, *("—" if v is None else f"{v:.4f}" for v in values)]
        if len(reports) == 2:
            a, b = values
            row.append("—" if a is None or b is None else f"{b - a:+.4f}")
        rows.append(row)
    return rows


def comparison_markdown(report: dict[str, Any]) -> str:
    """Heading lines (one per model), the table, and the verdict line."""
    reports = report["models"]
    heads = [f"- `{r['model']}` ({r['model_id']})" for r in reports]
    first = reports[0]
    intro = (
        f"{len(reports)} models on `{first['data']}`: {first['n_queries']} test images"
        + (f", {first['n_bank']} train images" if first.get("n_bank") else "")
        + captions_note(first["results"])
        + f"; {first['device']}, {first['date']}"
    )
    columns = ["task", "setting", *(f"`{r['model']}`" for r in reports)]
    if len(reports) == 2:
        columns.append("B − A")
    table = markdown_table(columns, comparison_rows(reports))
    return "\n".join([intro, "", *heads, "", table, "", verdict_line(report["verdict"])])


def verdict_line(v: dict[str, Any]) -> str:
    """'Better: `B` (rule: ...): serve it with `...`', or why there is no winner."""
    if v["rule"] is None:
        return "No headline number to compare."
    shown = ", ".join(f"{s:.4f}" for s in v["scores"])
    if v["better"] is None:
        return f"Tie on {v['rule']} ({shown}): no better model."
    return f"Better: `{v['better']}` on {v['rule']} ({shown}); serve it: `{v['serve']}`"
