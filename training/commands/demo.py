"""`contrastive demo [--data digits|fashion-mnist[:DIR]] [--out DIR] [--seconds 60]`.

Trains a tiny SimCLR model for about `--seconds` on a CPU and writes five PNG figures,
summary.md and summary.json into --out (the training run itself goes to OUT/run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits",
                   help="digits (scikit-learn, default) or fashion-mnist[:DIR] "
                        "(idx files, default /usr/share/datasets/fashion-mnist)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("demo"), help="output folder [demo]")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="time budget for the whole demo, training included [60]")  # fmt: skip
    p.add_argument("--steps", type=int, default=None,
                   help="train exactly this many steps instead of what fits the time budget "
                        "(the same result on a fast or a busy machine)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random seed [0]")


def run(args: argparse.Namespace) -> int:
    from contrastkit.training.commands.logs import log_to_stderr
    from contrastkit.training.data import DataError
    from contrastkit.training.demo import figures, pipeline, summary
    from contrastkit.training.extras import MissingExtraError, require

    if args.steps is not None and args.steps < 1:
        print(f"contrastive demo: --steps must be at least 1, not {args.steps}", file=sys.stderr)
        return 2
    log_to_stderr()
    out: Path = args.out
    try:
        # the figures (matplotlib) and the t-SNE maps and digits (scikit-learn): the `demo`
        # extra, checked before a minute of training rather than after it
        require("matplotlib", "sklearn", extra="demo")
    except MissingExtraError as e:
        print(f"contrastive demo: {e}", file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
        demo = pipeline.run(args.data, out, args.seconds, args.seed, steps=args.steps)
    except (DataError, ValueError, RuntimeError, OSError) as e:
        print(f"contrastive demo: {e}", file=sys.stderr)
        return 2
    drawn = figures.draw_all(demo, out)
    n = summary.write(demo, drawn, out)
    knn = n["knn"]
    print(f"demo: {n['steps']} steps in {n['total_seconds']:.0f}s; kNN top-1 "
          f"{knn['before']:.3f} -> {knn['after']:.3f}; figures, summary.md in {out}")  # fmt: skip
    return 0
