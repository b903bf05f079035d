"""The `contrastive` command: serve, index, bench, and the training subcommands.

This module is the distribution's entry point; it dispatches to the service and, lazily,
to the training package's own CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from service.settings import Settings


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    """One flag per Settings field; unset flags leave the env/default value alone."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_ = field.description or ""
        if name == "api_keys":
            p.add_argument("--api-key", dest=name, action="append", help="repeatable; " + help_)
            continue
        ann = field.annotation
        typ: Any = int if ann is int else float if ann is float else str
        p.add_argument(flag, dest=name, type=typ, default=None, help=f"{help_} [{field.default}]")


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {
        k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None
    }
    return Settings(**overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contrastive", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the REST service")
    _add_settings_flags(serve)
    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="what", required=True)
    from service import bench as bench_serve
    from service import bench_search

    bench_serve.add_arguments(bench_sub.add_parser("serve", help="HTTP vs in-process throughput"))
    bench_search.add_arguments(
        bench_sub.add_parser("search", help="search: raw FAISS vs our store vs HTTP; recall")
    )
    from training import bench as bench_train

    bench_train.add_arguments(
        bench_sub.add_parser(
            "train", help="training: step only vs end to end vs a DataLoader peer; kNN time"
        )
    )
    from training import bench_onnx

    bench_onnx.add_arguments(
        bench_sub.add_parser("onnx", help="torch vs onnxruntime on the CPU: latency, parity")
    )
    from service import index_cli
    from training.cli import add_other_commands, add_train_arguments

    add_train_arguments(sub.add_parser("train", help="train SimCLR, MoCo, BYOL, SwAV or CLIP"))
    add_other_commands(sub)
    index = sub.add_parser("index", help="add folders of images to a collection; search it")
    index_cli.add_arguments(index.add_subparsers(dest="index_command", required=True))
    return parser


def serve(settings: Settings) -> int:
    from service import shutdown
    from service.app import create_app
    from training.models import UnknownModelError, check_reference

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    # Fail fast on a reference that names nothing; the load itself runs after start-up,
    # with /readyz answering 503 until the model is warm.
    try:
        check_reference(settings.model, settings.device)
        from training.models.onnx_runtime import choose_runtime

        choose_runtime(settings.model, settings.runtime, settings.device)
    except (UnknownModelError, ValueError) as e:
        print(f"contrastive serve: {e}", file=sys.stderr)
        return 2
    shutdown.run(create_app(settings), settings)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(settings_from_args(args))
    if args.command == "bench":
        from service import bench, bench_search

        if args.what == "train":
            from training import bench as bench_train

            return bench_train.run(args)
        if args.what == "onnx":
            from training import bench_onnx

            return bench_onnx.run(args)
        return bench_search.run(args) if args.what == "search" else bench.run(args)
    if args.command == "train":
        from training.cli import train

        return train(args)
    from training.cli import run_other_command

    code = run_other_command(args)
    if code is not None:
        return code
    if args.command == "index":
        from service import index_cli

        return index_cli.run(args)
    return 2
