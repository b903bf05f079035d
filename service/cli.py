"""The `contrastive` command: serve, index, bench, and the training subcommands.

This module is the distribution's entry point: one table of commands (training.cli's
Command rows), each imported only when it runs, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from training import cli as table

DESCRIPTION = "Contrastive representation learning, and a service that serves what it learns."

BENCH = {
    "serve": table.Command("HTTP vs in-process throughput", "service.bench.serve"),
    "search": table.Command(
        "search: raw FAISS vs our store vs HTTP; recall", "service.bench.search"
    ),
    "train": table.Command(
        "training: step only vs end to end vs a DataLoader peer; kNN time", "training.bench.train"
    ),
    "onnx": table.Command(
        "torch vs onnxruntime on the CPU: latency, parity", "training.bench.onnx"
    ),
    "quality": table.Command(
        "every method: kNN per epoch, linear probe, LARS", "training.bench.quality"
    ),
}

COMMANDS: dict[str, table.Command] = {
    "serve": table.Command("start the REST service", "service.serve_cli"),
    "index": table.Command(
        "add folders of images to a collection; search, repair, export, import",
        "service.index_cli",
    ),
    "bench": table.Command("benchmarks", table=BENCH),
    **table.TRAINING_COMMANDS,
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The `contrastive` parser: every command's flags, or only those argv chooses."""
    return table.build_parser("contrastive", DESCRIPTION, COMMANDS, argv)


def main(argv: Sequence[str] | None = None) -> int:
    return table.dispatch("contrastive", DESCRIPTION, COMMANDS, argv)
