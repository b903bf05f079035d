"""`contrastive plot RUN [--out DIR]`: training curves of a run folder as a PNG.

Reads RUN/metrics.jsonl (or a metrics file given directly) and writes
DIR/training_curves.png (DIR defaults to RUN): loss, learning rate and kNN accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FILE = "training_curves.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder (holds metrics.jsonl) or a metrics file")
    p.add_argument("--out", type=Path, default=None, help="output folder [the run folder]")


def run(args: argparse.Namespace) -> int:
    from contrastkit.training.demo.curves import plot_curves
    from contrastkit.training.extras import MissingExtraError, require

    try:
        require("matplotlib", extra="demo")
    except MissingExtraError as e:
        print(f"contrastive plot: {e}", file=sys.stderr)
        return 2
    run_path: Path = args.run
    folder = run_path if run_path.is_dir() else run_path.parent
    out: Path = args.out if args.out is not None else folder
    try:
        path = plot_curves(run_path, out / FILE)
    except (OSError, ValueError) as e:  # missing file, unreadable or empty metrics
        print(f"contrastive plot: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
