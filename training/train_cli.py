"""`contrastive train` (also `python -m training train`): add_arguments(parser), run(args).

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
from typing import Any

from training.checkpoint import LAST, CheckpointError, load_checkpoint
from training.config import ConfigError, build_config, load_yaml, parse_overrides

# What a resumed run may change: how long, where and how fast it runs, and what it logs.
# Everything else (method settings, lr, temperature, data, ...) defines the run.
CHANGEABLE = frozenset({
    "out", "epochs", "steps", "device", "workers", "progress", "tensorboard", "compile",
    "channels_last", "deterministic", "log_every", "save_every", "checkpoint_every_steps",
    "knn_every", "knn_k", "knn_t", "knn_max_train", "max_nonfinite",
})  # fmt: skip
# Settings added later, with the behaviour that checkpoints written before them trained
# with: a resumed old run keeps it (LARS was unclipped with eta 0.02 until then).
BEFORE_SETTINGS_EXISTED = {"lars_eta": 0.02, "lars_clip": False, "lr_scaling": "linear"}
# Flags mapped onto config keys (default None = "not given").
FLAGS: dict[str, tuple[str, type, str]] = {
    "--method": ("method", str, "simclr | moco | byol | swav | clip"),
    "--data": (
        "data",
        str,
        "digits | fashion-mnist[:DIR] | mnist:DIR | folder:DIR | "
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
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    for flag, (_, typ, help_) in FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=help_)
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


def resolve(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any] | None]:
    """Command line (+ checkpoint when resuming) -> (TrainConfig, Params, checkpoint)."""
    from training.methods import get_method

    given = requested_values(args)
    out = Path(str(given.get("out", "runs/run")))
    checkpoint = None
    if (out / LAST).exists():
        if not args.resume:
            raise ConfigError(
                f"{out} already holds a run; pass --resume to continue it, or choose another --out"
            )
        checkpoint = load_checkpoint(out / LAST)
        saved = {**BEFORE_SETTINGS_EXISTED, **dict(checkpoint["config"])}
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


def refuse_changes(given: dict[str, Any], saved: dict[str, Any]) -> None:
    """Raise ConfigError listing every setting in `given` that differs from the checkpoint's
    `saved` config and may not change on resume (`name: saved -> new`)."""
    import typing

    from training.config import TrainConfig, coerce
    from training.methods import get_method

    run_types = typing.get_type_hints(TrainConfig)
    param_types = typing.get_type_hints(get_method(str(saved["method"])).Params)
    saved_params = dict(saved.get("method_params") or {})
    requested = {**dict(given.get("method_params") or {}), **given}
    requested.pop("method_params", None)
    changes = []
    for key, value in requested.items():
        if key in CHANGEABLE:
            continue
        if key in run_types:
            old, new = saved.get(key), coerce(value, run_types[key], key)
        elif key in param_types:
            old, new = saved_params.get(key), coerce(value, param_types[key], key)
        else:
            continue  # an unknown key: build_config names it with the valid ones
        if new != old:
            changes.append(f"  {key}: {old!r} -> {new!r}")
    if changes:
        raise ConfigError(
            "--resume cannot change what the run trains; these settings differ from the "
            "checkpoint's:\n" + "\n".join(changes) + "\nDrop them to resume, or start a new "
            f"run in another --out. A resumed run may change: {', '.join(sorted(CHANGEABLE))}"
        )


def list_settings(method: str) -> str:
    import dataclasses

    from training.config import TrainConfig
    from training.methods import get_method

    lines = ["run settings:"]
    lines += [f"  {f.name} = {f.default!r}" for f in dataclasses.fields(TrainConfig)
              if f.name != "method_params"]  # fmt: skip
    lines.append(f"{method} settings:")
    lines += [f"  {f.name} = {f.default!r}" for f in dataclasses.fields(get_method(method).Params)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from training.data import DataError
    from training.engine import NonFiniteError, Trainer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.list_settings:
            print(list_settings(args.method or "simclr"))
            return 0
        cfg, params, checkpoint = resolve(args)
        trainer = Trainer(cfg, params, resume=checkpoint)
    except (ConfigError, DataError, CheckpointError, ValueError) as e:
        print(f"contrastive train: {e}", file=sys.stderr)
        return 2
    from training import dist

    try:
        result = trainer.fit()
    except NonFiniteError as e:
        print(f"contrastive train: {e}", file=sys.stderr)
        return 1
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
