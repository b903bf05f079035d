"""What `contrastive embed` says at the end: embed-summary.json, and one line per reason
an item was skipped, with an example."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from contrastkit.service.commands.embed.job import Job
from contrastkit.service.commands.embed.parquet import PartWriter, write_atomic
from contrastkit.service.commands.embed.sources import Skip

SUMMARY = "embed-summary.json"


def summarise(
    writer: PartWriter, listed: int, listing_skips: list[Skip], job: Job, finished: bool
) -> dict[str, Any]:
    """The job so far (every run) and this run: rows, parts, skips by reason, speed.

    `listing_skips` (refused while listing the input) are found again by every run, so
    only this run's are counted; image skips are counted once, from the manifest."""
    skips = writer.skipped() + listing_skips
    counts = Counter(s.reason for s in skips)
    examples: dict[str, str] = {}
    for s in skips:
        examples.setdefault(s.reason, s.detail)
    return {
        "finished": finished,
        "model_id": job.encoder.model_id,
        "embed_dim": job.encoder.embed_dim,
        "listed": listed,
        "rows": writer.rows,
        "parts": sum(1 for p in writer.parts if p["file"]),
        "skipped": sum(counts.values()),
        "skipped_by_reason": {
            reason: {"count": n, "example": examples[reason]} for reason, n in counts.items()
        },
        "this_run": {
            "embedded": job.embedded,
            "parts": job.parts,
            "seconds": round(job.seconds, 3),
            "images_per_s": round(job.embedded / job.seconds, 2) if job.seconds else None,
        },
    }


def write_summary(folder: Path, summary: dict[str, Any]) -> Path:
    path = folder / SUMMARY
    write_atomic(path, (json.dumps(summary, indent=2) + "\n").encode())
    return path


def lines(summary: dict[str, Any], folder: Path) -> list[str]:
    """The closing report: what was written, then one line per skip reason."""
    run = summary["this_run"]
    state = "done" if summary["finished"] else "stopped (run it again to go on)"
    out = [
        f"contrastive embed: {state}: {summary['rows']} rows in {summary['parts']} parts in "
        f"{folder} ({run['embedded']} embedded by this run at {run['images_per_s']} images/s); "
        f"{summary['skipped']} skipped"
    ]
    for reason, entry in summary["skipped_by_reason"].items():
        out.append(f"  skipped {entry['count']}: {reason} (e.g. {entry['example']})")
    return out
