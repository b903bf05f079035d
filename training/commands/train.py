"""`contrastive train` (also `python -m contrastkit.training train`): add_arguments(parser),
run(args).

Settings come from, last wins: defaults < `--config FILE.yaml` < flags < `--set k=v`.
With `--resume`, the run folder's checkpoint supplies the settings and flags may only
change how long and how it runs (CHANGEABLE: epochs, steps, device, logging),
not what it trains. `--resume` on a folder without a checkpoint is an error (a typo in
--out must not start a fresh run); `--resume auto` starts the run then (for schedulers
that use one command for the first start and every restart).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contrastkit.training import catalog
from contrastkit.training.commands.logs import log_to_stderr
from contrastkit.training.config import (
    ConfigError,
    TrainConfig,
    build_config,
    load_yaml,
    parse_overrides,
)

if TYPE_CHECKING:
    from contrastkit.training.engine.checkpoint import Checkpoint
    from contrastkit.training.methods import MethodParams

# `--init-from open_clip:...` names a whole open_clip model, not a file
# (contrastkit.training.encoders.pretrained_clip.PREFIX, which imports torch)
OPEN_CLIP_START = "open_clip:"

# Flags mapped onto config keys (default None = "not given").
FLAGS: dict[str, tuple[str, type, str]] = {
    "--method": ("method", str, "{methods}"),  # filled from the method registry
    "--data": (
        "data",
        str,
        "digits | fashion-mnist[:DIR] | mnist:DIR | folder:DIR | shards:DIR | "
        "pairs:FILE | torchvision:NAME[:ROOT]",
    ),
    "--epochs": ("epochs", int, "epochs to train"),
    "--steps": ("steps", int, "stop after this many steps (overrides --epochs)"),
    "--batch-size": ("batch_size", int, "images per process per step"),
    "--out": ("out", str, "run folder: checkpoints, metrics.jsonl, tensorboard/"),
    "--device": ("device", str, "auto | cpu | cuda | cuda:N"),
    "--backbone": ("backbone", str, "resnet18 | resnet50 | tiny | timm:NAME | torchvision:NAME"),
    "--lr": ("lr", float, "base learning rate per 256 images"),
    "--seed": ("seed", int, "random seed"),
    "--init-from": (
        "init_from",
        str,
        "start the backbone from these weights: an export directory, .safetensors or "
        "a torch checkpoint (timm, open_clip)",
    ),
    "--accumulate": (
        "accumulate",
        int,
        "micro-batches per step (gradient accumulation; exact for BYOL, SimSiam, DINO)",
    ),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    methods = " | ".join(catalog.method_names())
    for flag, (_, typ, help_) in FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=help_.format(methods=methods))
    p.add_argument("--config", type=Path, help="YAML file of settings (key: value)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, e.g. --set temperature=0.2 (repeatable)")  # fmt: skip
    p.add_argument("--resume", nargs="?", const="required", choices=["required", "auto"],
                   help="continue the run in --out (an error when it holds no checkpoint); "
                   "`--resume auto`: continue it, or start it when none")  # fmt: skip
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--list-settings", action="store_true", help="print every setting and exit")


def requested_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings this command line gives explicitly (YAML, flags, --set)."""
    values: dict[str, Any] = load_yaml(args.config) if args.config else {}
    for _, (key, _, _) in FLAGS.items():
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if args.compile:
        values["compile"] = True
    values.update(parse_overrides(args.overrides))
    return values


def resolve(
    args: argparse.Namespace,
) -> tuple[TrainConfig, MethodParams, Checkpoint | None]:
    """Command line (+ checkpoint when resuming) -> (TrainConfig, Params, checkpoint)."""
    from contrastkit.training.engine.checkpoint import LAST, load_checkpoint
    from contrastkit.training.engine.resume import refuse_changes, with_old_defaults
    from contrastkit.training.methods import get_method

    given = requested_values(args)
    out = Path(str(given.get("out", "runs/run")))
    checkpoint = None
    if (out / LAST).exists():
        if not args.resume:
            raise ConfigError(
                f"{out} already holds a run; pass --resume to continue it, or choose another --out"
            )
        checkpoint = load_checkpoint(out / LAST)
        saved = with_old_defaults(dict(checkpoint.config))
        refuse_changes(given, saved)
        given = {**saved, **given}
    elif args.resume == "auto":
        logging.getLogger("contrastive.train").info("no checkpoint in %s: starting the run", out)
    elif args.resume:
        raise ConfigError(
            f"--resume: no checkpoint in {out} ({LAST} is missing); check --out, or pass "
            "`--resume auto` to start the run there when it has none"
        )
    method_cls = get_method(str(given.get("method", "simclr")))
    cfg, params = build_config(given, method_cls.Params)
    return cfg, params, checkpoint


def list_settings(method: str) -> str:
    """Every run setting and `method`'s settings, each with its default and where that
    default comes from (`name = default  # source`); then the run settings whose None
    means "the method's default", with the method's value and its source. The `method`
    row shows `method` itself (the run's choice), with the source of the default."""
    import dataclasses

    from contrastkit.training.config import TrainConfig, setting_sources
    from contrastkit.training.methods import get_method

    def rows(cls: type, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        sources = setting_sources(cls)
        return [(f"{f.name} = {f.default!r}", sources.get(f.name, "source not recorded"))
                for f in dataclasses.fields(cls) if f.name not in skip]  # fmt: skip

    method_cls = get_method(method)
    method_sources = method_cls.DEFAULT_SOURCES
    unset = [
        (f"{key} = {getattr(method_cls, 'default_' + key)!r}",
         method_sources.get(key, "source not recorded"))
        for key in ("optimizer", "lr", "weight_decay")
    ]  # fmt: skip
    run_rows = [_chosen_method_row(row, method) for row in rows(TrainConfig, ("method_params",))]
    sections = [
        ("run settings:", run_rows),
        (f"{method} settings:", rows(method_cls.Params)),
        (f"{method}'s defaults for run settings left None:", unset),
    ]
    width = max(len(setting) for _, section in sections for setting, _ in section)
    lines = []
    for title, section in sections:
        lines.append(title)
        lines += [f"  {setting.ljust(width)}  # {source}" for setting, source in section]
    return "\n".join(lines)


def _chosen_method_row(row: tuple[str, str], method: str) -> tuple[str, str]:
    """The `method = ...` row shows the method being listed, not TrainConfig's default;
    any other row is returned as it is."""
    setting, source = row
    if not setting.startswith("method = "):
        return row
    default = setting.partition(" = ")[2]
    if default == repr(method):
        return row
    return f"method = {method!r}", f"chosen with --method (default {default}: {source})"


def check_command_line(args: argparse.Namespace) -> None:
    """ConfigError for what the command line gets wrong that needs no torch to see: an
    unknown method or setting key (with the closest valid one), a --config or --init-from
    file that is not there. Runs before the engine is imported, so it answers at once."""
    given = requested_values(args)
    method = given.get("method")
    if method is None and not args.resume:  # resuming: the checkpoint names the method
        method = TrainConfig.method
    catalog.check_settings(given, None if method is None else str(method))
    init_from = given.get("init_from")
    is_model = str(init_from).startswith(OPEN_CLIP_START)  # a model to load, not a file
    if init_from is not None and not is_model and not Path(str(init_from)).exists():
        raise ConfigError(f"--init-from {init_from}: no such file or export directory")


def run(args: argparse.Namespace) -> int:
    log_to_stderr()
    try:
        check_command_line(args)
    except ConfigError as e:
        print(f"contrastive train: {e}", file=sys.stderr)
        return 2
    from contrastkit.training.data import DataError
    from contrastkit.training.engine.checkpoint import CheckpointError
    from contrastkit.training.engine.trainer import NonFiniteError, Trainer
    from contrastkit.training.extras import MissingExtraError, require_data

    try:
        if args.list_settings:
            # the method named anywhere on the command line (--config, --method, --set)
            print(list_settings(str(requested_values(args).get("method", "simclr"))))
            return 0
        cfg, params, checkpoint = resolve(args)
        require_data(cfg.data)  # e.g. digits without scikit-learn: before any model is built
        trainer = Trainer(cfg, params, resume=checkpoint)
    except (ConfigError, DataError, CheckpointError, ValueError, MissingExtraError) as e:
        print(f"contrastive train: {e}", file=sys.stderr)
        return 2
    from contrastkit.training import dist

    try:
        result = trainer.fit()
    except NonFiniteError as e:
        print(f"contrastive train: {e}", file=sys.stderr)
        return 1
    except DataError as e:  # too many samples skipped while decoding (max_skipped)
        print(f"contrastive train: {e}", file=sys.stderr)
        return 2
    finally:
        main_rank = dist.is_main()
        dist.cleanup()
    if main_rank:
        print(summary_line(result))
    return 130 if result.stopped == "signal" else 0


def summary_line(result: Any) -> str:
    knn = f", kNN top-1 {result.knn_top1:.4f}" if result.knn_top1 is not None else ""
    loss = f"{result.loss:.4f}" if result.loss is not None else "n/a"
    return (
        f"{result.method}: {result.steps} steps, loss {loss}{knn}, "
        f"{result.images_per_second:.0f} img/s; run folder {result.out}"
    )
