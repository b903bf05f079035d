"""The run configuration: one typed dataclass, a YAML file, and `--set key=value` overrides.

Precedence (last wins): dataclass defaults < the method's own defaults < YAML file <
command-line flags < `--set`. Method hyper-parameters (temperature, queue size, ...)
live in each method's `Params` dataclass and are set with the same `--set key=value`;
a key that names neither the run nor the method is an error that names the closest
valid key and lists them all.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, overload

from contrastkit.training.suggest import did_you_mean


class ConfigError(ValueError):
    """A configuration key or value is not valid; the message says what to change."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (and is saved in every checkpoint).

    Batch size is per process; the learning rate is `lr * global_batch / 256` (the
    linear scaling rule; `lr_scaling=sqrt`: `lr * sqrt(global_batch / 256)`), so one `lr`
    works across GPU counts.
    """

    method: str = "simclr"
    data: str = "digits"
    out: str = "runs/run"
    epochs: int = 10
    steps: int | None = None  # stop after this many optimiser steps (overrides epochs)
    batch_size: int = 256
    device: str = "auto"
    seed: int = 0
    # encoder
    backbone: str = "resnet18"  # resnet18|resnet50|tiny|timm:NAME|torchvision:NAME|open_clip:ARCH
    cifar_stem: bool | None = None  # None: on when image_size <= 64
    # backbone weights to start from (contrastkit.training.engine.pretrained): an export directory,
    # a .safetensors file or a torch checkpoint; None: a fresh initialisation
    init_from: str | None = None
    # side of the training views (px); None: follow the data (contrastkit.training.data.size: native
    # size for small-image sets, 32 for digits, 224 for photos), resolved before loading
    image_size: int | None = None
    # SimCLR's colour strength s for the recipes that size it (SimCLR, SwAV, moco-tuned):
    # jitter 0.8s/0.8s/0.8s/0.2s; None: by image size (1.0 from 96 px, else 0.5)
    jitter_strength: float | None = None
    # optimisation
    optimizer: str | None = None  # sgd | lars | adamw; None: the method's default
    lr: float | None = None  # base lr per 256 images; None: the method's default
    weight_decay: float | None = None  # None: the method's default
    momentum: float = 0.9
    lr_scaling: str = "linear"  # linear | sqrt: how the peak lr follows the global batch
    lars_eta: float = 0.02  # LARS trust coefficient (You et al. 2017)
    lars_clip: bool = True  # LARC clipping: a layer's rate is min(eta*|w|/(|g|+wd|w|), lr)
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0  # cosine ends at lr * min_lr_ratio
    grad_clip: float | None = None
    # Gradients of `accumulate` micro-batches of batch_size / accumulate, summed before
    # one optimiser step: the large batch's gradient exactly for per-sample losses
    # (BYOL, SimSiam, DINO) but for BatchNorm statistics; for in-batch negatives or
    # batch statistics (SimCLR, MoCo, SwAV, CLIP, Barlow Twins, VICReg) each micro-batch
    # is its own batch (README: Large batches on small GPUs).
    accumulate: int = 1
    grad_checkpointing: bool = False  # recompute the backbone's activations in backward
    # speed
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    channels_last: bool = True  # CUDA only
    compile: bool = False
    workers: int = 4  # decode workers for folder/pairs data
    # pairs data: this fraction of the rows (chosen by `seed`) is held out of training,
    # for evaluation on pairs the model never saw
    # (contrastkit.training.evaluate.data.holdout_eval_data)
    holdout: float = 0.1
    # stop when more than this fraction of the samples (and more than 10) were skipped:
    # missing files, empty captions, unreadable images
    max_skipped: float = 0.01
    sync_bn: bool = True  # SyncBatchNorm under multi-GPU DDP (CUDA only)
    # bookkeeping
    log_every: int = 10  # steps between metric lines
    save_every: int = 1  # epochs between checkpoints (and always at the end)
    checkpoint_every_steps: int = 0  # also checkpoint every N steps (preemptible machines)
    knn_every: int = 1  # epochs between online kNN evaluations; 0 disables
    knn_k: int = 200
    knn_t: float = 0.1
    knn_max_train: int = 60000  # cap on the kNN memory bank (train images)
    max_nonfinite: int = 10  # consecutive non-finite losses before the run stops
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact resume on CPU)
    tensorboard: bool = True
    progress: bool = True
    # CLIP runs from pretrained weights (--init-from): score the start and the end model
    # on held-out data, side by side (contrastkit.training.engine.start_vs_end)
    before_after: bool = True
    method_params: dict[str, Any] = field(default_factory=dict)

    # Where each default comes from (`--list-settings` prints it): a paper, a public
    # recipe, or an engineering choice of this project (and why).
    SOURCES: ClassVar[dict[str, str]] = {
        "method": "SimCLR (Chen et al. 2020): the simplest method",
        "data": "engineering: scikit-learn digits ship offline",
        "out": "engineering",
        "epochs": "engineering: short CPU-friendly runs on small data",
        "steps": "engineering: None = epochs decide",
        "batch_size": "paper: MoCo v1/v2 and SwAV's small-batch recipe (256)",
        "device": "engineering: CUDA when present",
        "seed": "engineering",
        "backbone": "solo-learn CIFAR recipes (ResNet-18)",
        "cifar_stem": "SimCLR appendix B.9 (3x3 stem, no max-pool for small images)",
        "image_size": "follows the data: native size of small-image sets (fashion-mnist 28, "
        "CIFAR 32, STL10 96), 224 for folder/pairs/shards (the ImageNet recipes'), 32 for "
        "8x8 digits (room for crops)",
        "jitter_strength": "paper: SimCLR (s = 1.0 on ImageNet, 0.5 on CIFAR-10), by size",
        "optimizer": "the method's default (see below)",
        "lr": "the method's default (see below)",
        "weight_decay": "the method's default (see below)",
        "momentum": "paper: SimCLR/MoCo/SwAV (SGD/LARS momentum 0.9)",
        "lr_scaling": "paper: Goyal et al. 2017 (linear scaling per 256 images)",
        "lars_eta": "solo-learn recipes (scripts/pretrain/cifar/*.yaml: optimizer.kwargs.eta "
        "0.02); You et al.'s 0.001 is for unclipped LARS",
        "lars_clip": "solo-learn recipes (optimizer.kwargs.clip_lr: True; solo/utils/lars.py, "
        "apex LARC)",
        "warmup_epochs": "engineering: short runs (SimCLR warms up 10 epochs of 100+)",
        "min_lr_ratio": "paper: SimCLR/MoCo v2 (cosine decay to 0)",
        "grad_clip": "engineering: off, as the papers",
        "init_from": "engineering: none (train from scratch, as the papers)",
        "accumulate": "engineering: off (1)",
        "grad_checkpointing": "engineering: off (trades ~30% more compute for memory)",
        "precision": "engineering: bf16 autocast on CUDA",
        "channels_last": "engineering: faster convolutions on CUDA",
        "compile": "engineering: off (compile time dominates short runs)",
        "workers": "engineering",
        "holdout": "engineering: 10% of a user's own pairs kept for retrieval scores on "
        "unseen pairs; the rest still trains",
        "max_skipped": "engineering: a few bad rows (a deleted image, an empty caption, a "
        "corrupt JPEG) are skipped; more than 1% usually means wrong paths or a broken "
        "export, which training through would hide",
        "sync_bn": "paper: SimCLR/BYOL/SwAV (BN statistics over the global batch)",
        "log_every": "engineering",
        "save_every": "engineering",
        "checkpoint_every_steps": "engineering: off",
        "knn_every": "engineering",
        "knn_k": "MoCo's CIFAR demo kNN monitor (k = 200), after Wu et al. 2018",
        "knn_t": "MoCo's CIFAR demo kNN monitor (t = 0.1)",
        "knn_max_train": "engineering: bounds the memory bank (MNIST's 60000)",
        "max_nonfinite": "engineering",
        "deterministic": "engineering: off (slower kernels)",
        "tensorboard": "engineering",
        "progress": "engineering",
        "before_after": "engineering: a fine-tuning run says whether it beat its start",
    }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)


def unknown_setting(key: str, valid: Sequence[str]) -> ConfigError:
    """The error for a setting key that names nothing: the closest key, and every key."""
    return ConfigError(
        f"unknown setting {key!r}{did_you_mean(key, valid)}; valid settings: {', '.join(valid)}"
    )


def setting_sources(cls: type) -> dict[str, str]:
    """{field: where its default comes from} for a settings dataclass: a `SOURCES`
    class dict, overridden by any field's `metadata={"source": ...}`; fields with
    neither are absent (`--list-settings` says "source not recorded")."""
    sources = dict(getattr(cls, "SOURCES", {}))
    for f in dataclasses.fields(cls):
        if "source" in f.metadata:
            sources[f.name] = str(f.metadata["source"])
    return sources


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a string from the command line (or a YAML scalar) to the field's type."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing) | vars(types))  # our own annotations only
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin in (tuple, list):
        items = json.loads(value) if isinstance(value, str) else value
        return type(items)(items) if origin is list else tuple(items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation in (int, float, str):
        try:
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}") from None
    if annotation is typing.Any or annotation is dict or origin is dict:
        return value
    raise ConfigError(f"{key}: cannot set a value of type {annotation}")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """["a=1", "b=x"] -> {"a": "1", "b": "x"}."""
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {p!r}")
        out[key.strip()] = value.strip()
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value")
    return data


PT = TypeVar("PT")


@overload
def build_config(values: dict[str, Any], params_cls: type[PT]) -> tuple[TrainConfig, PT]: ...
@overload
def build_config(values: dict[str, Any], params_cls: None = None) -> tuple[TrainConfig, None]: ...
def build_config(
    values: dict[str, Any], params_cls: type[PT] | None = None
) -> tuple[TrainConfig, PT | None]:
    """Flat {key: value} -> (TrainConfig, method Params instance; None without a class).

    Keys name a TrainConfig field or a field of the method's `Params` dataclass; a
    nested `method_params:` mapping (as written into checkpoints) is accepted too.
    """
    run_types = _field_types(TrainConfig)
    param_types = _field_types(params_cls) if params_cls is not None else {}
    run: dict[str, Any] = {}
    params: dict[str, Any] = {}
    flat = dict(values)
    nested = flat.pop("method_params", None) or {}
    for key, value in [*nested.items(), *flat.items()]:
        if key in run_types and key not in nested:
            run[key] = coerce(value, run_types[key], key)
        elif key in param_types:
            params[key] = coerce(value, param_types[key], key)
        else:
            valid = sorted(set(run_types) - {"method_params"}) + sorted(param_types)
            raise unknown_setting(key, valid)
    cfg = TrainConfig(**run)
    method_params = params_cls(**params) if params_cls is not None else None
    if method_params is not None:
        cfg.method_params = dataclasses.asdict(method_params)  # type: ignore[call-overload]
    validate(cfg)
    return cfg, method_params


def validate(cfg: TrainConfig) -> None:
    """Reject values that would fail later, with a message that says what to change."""
    if cfg.batch_size < 2:
        raise ConfigError("batch_size must be at least 2 (contrastive losses need pairs)")
    if cfg.epochs < 1:
        raise ConfigError("epochs must be at least 1")
    if cfg.steps is not None and cfg.steps < 1:
        raise ConfigError("steps must be at least 1")
    if cfg.optimizer not in (None, "sgd", "lars", "adamw"):
        raise ConfigError(f"optimizer must be sgd, lars or adamw, got {cfg.optimizer!r}")
    if cfg.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"precision must be auto, bf16, fp16 or fp32, got {cfg.precision!r}")
    if cfg.image_size is not None and cfg.image_size < 8:
        raise ConfigError("image_size must be at least 8")
    if cfg.jitter_strength is not None and not 0 <= cfg.jitter_strength <= 2.5:
        # the hue shift is 0.2 s turns, and a hue shift beyond half a turn is meaningless
        raise ConfigError("jitter_strength must be in [0, 2.5] (SimCLR: 1.0, CIFAR: 0.5)")
    if cfg.accumulate < 1 or cfg.batch_size % cfg.accumulate:
        raise ConfigError(
            f"accumulate must be >= 1 and divide batch_size ({cfg.batch_size}), "
            f"got {cfg.accumulate}"
        )
    if cfg.lr_scaling not in ("linear", "sqrt"):
        raise ConfigError(f"lr_scaling must be linear or sqrt, got {cfg.lr_scaling!r}")
    if cfg.lars_eta <= 0:
        raise ConfigError("lars_eta must be positive (solo-learn's recipes use 0.02)")
    if cfg.lr is not None and cfg.lr <= 0:
        raise ConfigError("lr must be positive")
    if not 0 <= cfg.holdout < 1:
        raise ConfigError(f"holdout must be in [0, 1) (0: train on every row), got {cfg.holdout}")
    if not 0 <= cfg.max_skipped <= 1:
        raise ConfigError(f"max_skipped must be in [0, 1], got {cfg.max_skipped}")
