"""Run metrics: one JSON object per line in RUN/metrics.jsonl, mirrored to TensorBoard.

The JSONL file is the source of truth (plots and tests read it); TensorBoard is a view
of it when the `tensorboard` package is installed. On resume, lines past the resumed
step are dropped, so the file always describes one consistent run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger("contrastive.train")

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """Append `{"step": s, "kind": ..., name: value, ...}` records; rank 0 only writes."""

    def __init__(self, out: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = out / METRICS_FILE
        self._tb: Any = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # the `train` extra installs it
                log.info(
                    "no tensorboard logs: tensorboard is not installed (pip install "
                    "'contrastkit[train]'); metrics go to %s",
                    self.path,
                )

    def truncate_after(self, step: int) -> None:
        """Drop records with step > `step` (written after the checkpoint we resume from)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if _step(ln) <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def log(self, step: int, kind: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: _num(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """All records of a run folder's metrics file, in order."""
    path = Path(run) / METRICS_FILE if Path(run).is_dir() else Path(run)
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line: drop it


def _num(v: float) -> float | None:
    # JSON has no NaN/Inf; keep the record valid and the fact visible as null.
    return v if math.isfinite(v) else None
