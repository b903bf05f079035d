"""The `contrastive` command: serve, index, bench, and the training subcommands.

This module is the distribution's entry point: one table of commands (contrastkit.training.cli's
Command rows), each imported only when it runs, so `--help` answers at once. A command is
a module of service/commands/ (or a benchmark of service/bench/) named after it; one with
subcommands (`index`, `bench`) is a nested table.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from contrastkit.training import cli as table

DESCRIPTION = "Contrastive representation learning, and a service that serves what it learns."

BENCH = {
    "serve": table.Command(
        "HTTP vs in-process throughput",
        "contrastkit.service.bench.serve",
        flags="contrastkit.service.bench.flags:serve",
    ),
    "overload": table.Command(
        "open loop at 4x capacity: 200/503 only, fast 503s, bounded 200s",
        "contrastkit.service.bench.overload",
        flags="contrastkit.service.bench.flags:overload",
    ),
    "search": table.Command(
        "search: raw FAISS vs our store vs HTTP; recall",
        "contrastkit.service.bench.search",
        flags="contrastkit.service.bench.flags:search",
    ),
    "train": table.Command(
        "training: step only vs end to end vs a DataLoader peer; kNN time",
        "contrastkit.training.bench.train",
        flags="contrastkit.training.bench.flags:train",
    ),
    "onnx": table.Command(
        "torch vs onnxruntime on the CPU: latency, parity",
        "contrastkit.training.bench.onnx",
        flags="contrastkit.training.bench.flags:onnx",
    ),
    "quality": table.Command(
        "every method: kNN per epoch, linear probe, LARS",
        "contrastkit.training.bench.quality",
        flags="contrastkit.training.bench.flags:quality",
    ),
    "embed": table.Command(
        "embed job end to end vs the encoder on pre-decoded tensors",
        "contrastkit.service.bench.embed",
    ),
    "migrate": table.Command(
        "index migrate vs rebuilding by hand with the new model, items/s",
        "contrastkit.service.bench.migrate",
    ),
    "finetune": table.Command(
        "fine-tuning open_clip: our Trainer vs open_clip's own loop, img/s",
        "contrastkit.training.bench.finetune",
        flags="contrastkit.training.bench.flags:finetune",
    ),
}

ALIAS = {
    "set": table.Command(
        "point an alias at a collection (create, or switch atomically)",
        "contrastkit.service.commands.index.alias.set",
    ),
    "rm": table.Command(
        "remove an alias (its collection stays)", "contrastkit.service.commands.index.alias.rm"
    ),
    "ls": table.Command("list the aliases", "contrastkit.service.commands.index.alias.ls"),
}

INDEX = {
    "add": table.Command(
        "embed images (files or folders, recursive) into a collection; resumable",
        "contrastkit.service.commands.index.add",
    ),
    "search": table.Command(
        "search a collection by text", "contrastkit.service.commands.index.search"
    ),
    "repair": table.Command(
        "salvage every readable record of a damaged collection; report what was lost",
        "contrastkit.service.commands.index.repair",
    ),
    "export": table.Command(
        "write a collection (items, vectors, model id, index spec) to a file",
        "contrastkit.service.commands.index.export",
    ),
    "import": table.Command(
        "create a collection from a file written by `export`",
        "contrastkit.service.commands.index.import_",
    ),
    "migrate": table.Command(
        "rebuild a collection with another model from its sources; switch an alias to it",
        "contrastkit.service.commands.index.migrate",
    ),
    "alias": table.Command("second names for collections, switched atomically", table=ALIAS),
}

COMMANDS: dict[str, table.Command] = {
    "serve": table.Command("start the REST service", "contrastkit.service.commands.serve"),
    "index": table.Command(
        "add folders of images to a collection; search, repair, export, import, alias",
        table=INDEX,
    ),
    "embed": table.Command(
        "embed a whole data set (folder, tar shards, list) into parquet files; resumable",
        "contrastkit.service.commands.embed",
    ),
    "bench": table.Command("benchmarks", table=BENCH),
    **table.TRAINING_COMMANDS,
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The `contrastive` parser: every command's flags, or only those argv chooses."""
    return table.build_parser("contrastive", DESCRIPTION, COMMANDS, argv)


def main(argv: Sequence[str] | None = None) -> int:
    return table.dispatch("contrastive", DESCRIPTION, COMMANDS, argv)
