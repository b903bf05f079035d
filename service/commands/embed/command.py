"""`contrastive embed`: list the input, load the model, run the job, report."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contrastkit.service.commands.embed.sources import InputError

if TYPE_CHECKING:
    from contrastkit.service.commands.embed.job import Job, Options, PartHook
    from contrastkit.service.commands.embed.parquet import PartWriter, Rows
    from contrastkit.training.encoders import Encoder

DEFAULT_PIXELS = 40_000_000  # the service's max_image_pixels default


def embed(args: argparse.Namespace, on_part: PartHook | None = None) -> int:
    """The command (see contrastkit.service.commands.embed's help); `on_part` is for tests."""
    from contrastkit.service.commands.embed.parquet import pyarrow_parquet

    try:
        pyarrow_parquet()  # before torch and the model load: say now that the extra is missing
    except InputError as e:
        print(f"contrastive embed: {e}", file=sys.stderr)
        return 2
    from contrastkit.training.encoders import MissingCapabilityError

    try:
        return _embed(args, on_part)
    except (InputError, MissingCapabilityError, ValueError) as e:
        # ValueError: an unknown model, a missing CUDA device, a bad option
        print(f"contrastive embed: {e}", file=sys.stderr)
        return 2


def _embed(args: argparse.Namespace, on_part: PartHook | None) -> int:
    # as `serve` does: idle OpenMP threads sleep rather than spin against the decode pool
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    _check_positive(args)
    if args.ray is None:
        if args.actors is not None:
            raise InputError("--actors needs --ray")
        return _run(args, on_part)
    from contrastkit.service.commands.embed.ray_job import ray_session

    # joined (or started) before the model loads, so that a missing extra or a wrong
    # address is said at once; a Ray started here is shut down at the end
    with ray_session(args.ray):
        return _run(args, on_part)


def _run(args: argparse.Namespace, on_part: PartHook | None) -> int:
    """List, load, embed what is not done yet, report."""
    from tqdm import tqdm

    from contrastkit.service.commands.embed.parquet import PartWriter
    from contrastkit.service.commands.embed.report import lines, summarise, write_summary
    from contrastkit.service.commands.embed.sources import list_input

    columns = {"path": args.path_column, "id": args.id_column, "caption": args.caption_column}
    listing = list_input(args.input, args.kind, columns)
    # with --ray the actors embed; this process's copy of the model only names it (and
    # fills --collection), so it stays on the CPU, off any GPU that an actor may need
    here = args if args.ray is None else argparse.Namespace(**{**vars(args), "device": "cpu"})
    encoder, sink, close = _model_and_sink(here)
    try:
        out = Path(args.out)
        writer = PartWriter(out, encoder.model_id, encoder.embed_dim, sink)
        todo = [item for item in listing.items if item.id not in writer.done]
        options = _options(args, encoder)
        with tqdm(
            total=len(listing.items), initial=len(listing.items) - len(todo), unit="img",
            desc="embed", file=sys.stderr, dynamic_ncols=True, disable=None,
        ) as bar:  # fmt: skip
            job = _job(args, encoder, writer, options, bar, on_part)
            finished = job.run(todo)
    finally:
        close()
    summary = summarise(writer, len(listing.items), listing.skips, job, finished)
    write_summary(out, summary)
    print("\n".join(lines(summary, out)), file=sys.stderr)
    return 0


def _job(
    args: argparse.Namespace,
    encoder: Encoder,
    writer: PartWriter,
    options: Options,
    bar: Any,
    on_part: PartHook | None,
) -> Job:
    """The one-machine Job, or with --ray the RayJob (same writer, same parts)."""
    from contrastkit.service.commands.embed.job import Job

    if args.ray is None:
        return Job(encoder, writer, options, bar, on_part)
    from contrastkit.service.commands.embed.ray_job import RayJob, RayPlan

    plan = RayPlan(
        actors=args.actors,
        batch=args.batch,
        model=args.model,
        pretrained=args.pretrained,
        device=args.device,
        max_pixels=options.max_pixels,
        workers=args.workers,
        device_decode=args.device_decode,
    )
    return RayJob(encoder, writer, options, plan, bar, on_part)


def _check_positive(args: argparse.Namespace) -> None:
    for flag in ("batch", "part_rows", "workers", "max_image_pixels", "max_parts", "actors"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be at least 1")


def _options(args: argparse.Namespace, encoder: Encoder) -> Options:
    from contrastkit.service.commands.embed.job import Options

    batch = args.batch or (256 if encoder.device.type == "cuda" else 64)
    return Options(
        batch=batch,
        part_rows=args.part_rows,
        workers=args.workers or min(8, os.cpu_count() or 1),
        max_pixels=args.max_image_pixels or DEFAULT_PIXELS,
        max_parts=args.max_parts,
        device_decode=args.device_decode == "on"
        or (args.device_decode == "auto" and encoder.device.type == "cuda"),
    )


def _model_and_sink(
    args: argparse.Namespace,
) -> tuple[Encoder, Callable[[Rows], None] | None, Callable[[], None]]:
    """(the encoder, what receives each part's rows, what closes it): with --collection,
    the LocalTarget of `index add` loads the model and opens the collection."""
    if args.collection is None:
        from contrastkit.training.encoders import load_encoder

        return load_encoder(args.model, args.pretrained, args.device), None, lambda: None
    from contrastkit.service.commands.index.local import LocalTarget

    target = LocalTarget(args, create=True)

    def upsert(rows: Rows) -> None:
        meta: list[dict[str, Any]] = [
            {"path": src, **m} for src, m in zip(rows.sources, rows.metadata, strict=True)
        ]
        target.col.upsert(rows.ids, rows.matrix(), meta)

    return target.encoder, upsert, target.close
