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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.checkpoint import LAST, CheckpointError, load_checkpoint
from training.config import ConfigError, build_config, load_yaml, parse_overrides

# What a resumed run may change: how long, where and how fast it runs, and what it logs.
# Everything else (method settings, lr, temperature, data, ...) defines the run.
CHANGEABLE = frozenset({
    "out", "epochs", "steps", "device", "workers", "progress", "tensorboard", "compile",
    "channels_last", "deterministic", "log_every", "save_every", "checkpoint_every_steps",
    "knn_every", "knn_k", "knn_t", "knn_max_train", "max_nonfinite", "grad_checkpointing",
})  # fmt: skip
# Settings added later, with the behaviour that checkpoints written before them trained
# with: a resumed old run keeps it (LARS was unclipped with eta 0.02 until then; colour
# jitter was 0.4/0.4/0.4/0.1, SimCLR's s = 0.5, at every image size).
BEFORE_SETTINGS_EXISTED = {
    "lars_eta": 0.02, "lars_clip": False, "lr_scaling": "linear", "jitter_strength": 0.5,
}  # fmt: skip


@dataclass(frozen=True)
class MethodBefore:
    """What a method's checkpoint trained with before some of its settings existed.

    A checkpoint whose `method_params` lacks any key of `params` predates them: it gets
    those values, and `run_if_unset` for run settings it left None (None meant "the
    method's default", and that default has changed since).
    """

    params: dict[str, Any]
    run_if_unset: dict[str, Any] = field(default_factory=dict)


# Until crop_min_scale existed, `moco` was the tuned variant that `moco-tuned` is now
# (scale 0.08 and LARS at 0.4 / 1e-5; its momentum and head were saved explicitly).
# SwAV needs no entry: its old checkpoints hold freeze_prototypes_steps=313 and
# queue_length=0 explicitly, and explicit values win over the new epoch count and
# automatic queue.
METHOD_BEFORE_SETTINGS_EXISTED: dict[str, MethodBefore] = {
    "moco": MethodBefore(
        params={"crop_min_scale": 0.08},
        run_if_unset={"optimizer": "lars", "lr": 0.4, "weight_decay": 1e-5},
    ),
}


def with_old_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's saved config + the behaviour of settings added after it was written
    (BEFORE_SETTINGS_EXISTED, METHOD_BEFORE_SETTINGS_EXISTED), so it resumes unchanged."""
    saved = {**BEFORE_SETTINGS_EXISTED, **config}
    before = METHOD_BEFORE_SETTINGS_EXISTED.get(str(saved.get("method")))
    params = dict(saved.get("method_params") or {})
    if before is None or set(before.params) <= set(params):
        return saved
    saved["method_params"] = {**before.params, **params}
    for key, value in before.run_if_unset.items():
        if saved.get(key) is None:
            saved[key] = value
    return saved


# Flags mapped onto config keys (default None = "not given").
FLAGS: dict[str, tuple[str, type, str]] = {
    "--method": (
        "method",
        str,
        "simclr | moco | moco-tuned | byol | swav | clip | barlow | vicreg | simsiam | dino",
    ),
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
        saved = with_old_defaults(dict(checkpoint["config"]))
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
    """Every run setting and `method`'s settings, each with its default and where that
    default comes from (`name = default  # source`); then the run settings whose None
    means "the method's default", with the method's value and its source."""
    import dataclasses

    from training.config import TrainConfig, setting_sources
    from training.methods import get_method

    def rows(cls: type, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        sources = setting_sources(cls)
        return [(f"{f.name} = {f.default!r}", sources.get(f.name, "source not recorded"))
                for f in dataclasses.fields(cls) if f.name not in skip]  # fmt: skip

    method_cls = get_method(method)
    method_sources: dict[str, str] = getattr(method_cls, "DEFAULT_SOURCES", {})
    unset = [
        (f"{key} = {getattr(method_cls, 'default_' + key)!r}",
         method_sources.get(key, "source not recorded"))
        for key in ("optimizer", "lr", "weight_decay")
    ]  # fmt: skip
    sections = [
        ("run settings:", rows(TrainConfig, skip=("method_params",))),
        (f"{method} settings:", rows(method_cls.Params)),
        (f"{method}'s defaults for run settings left None:", unset),
    ]
    width = max(len(setting) for _, section in sections for setting, _ in section)
    lines = []
    for title, section in sections:
        lines.append(title)
        lines += [f"  {setting.ljust(width)}  # {source}" for setting, source in section]
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
