"""The training methods by name, and the settings each takes, without importing them.

The method registry (contrastkit.training.methods) imports every method module, and with them torch:
seconds before a command line can be answered. The command line needs only the names
(`--method`, the help texts) and the setting keys (`--set`, a YAML file), so they are
kept here as well, in a module that imports nothing heavy; tests/training/test_catalog.py
checks that this table equals the registry. A new method file adds its row here (the
test prints the row).

`check_settings` refuses an unknown method or setting key with the nearest valid one, so
`contrastive train --method simclrr` or `--set temperatur=0.2` is answered at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from contrastkit.training.config import ConfigError, TrainConfig, unknown_setting
from contrastkit.training.suggest import did_you_mean

# `--method` name -> the fields of its Params dataclass (its `--set` keys), in field order
METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    "barlow": ("proj_hidden", "proj_dim", "proj_layers", "lambd", "head_norm"),
    "byol": (
        "proj_hidden", "proj_dim", "pred_hidden", "base_momentum", "final_momentum",
        "head_norm",
    ),
    "clip": (
        "embed_dim", "text_tower", "text_width", "text_layers", "text_heads",
        "context_length", "lock_text", "lock_image", "image_unlocked_groups",
        "text_unlocked_layers", "layer_decay", "logit_lr_scale", "loss", "init_logit_scale",
        "max_logit_scale", "init_logit_bias", "templates", "min_crop_scale", "head_norm",
        "multi_positive",
    ),
    "dino": (
        "out_dim", "proj_hidden", "proj_dim", "proj_layers", "head_norm", "student_temp",
        "teacher_temp", "warmup_teacher_temp", "warmup_teacher_temp_epochs",
        "center_momentum", "base_momentum", "final_momentum", "n_small_crops", "small_size",
        "freeze_last_layer_epochs", "views",
    ),
    "moco": (
        "temperature", "queue_size", "proj_hidden", "proj_dim", "base_momentum",
        "final_momentum", "shuffle_bn", "symmetric", "head_norm", "crop_min_scale",
    ),
    "moco-tuned": (
        "temperature", "queue_size", "proj_hidden", "proj_dim", "base_momentum",
        "final_momentum", "shuffle_bn", "symmetric", "head_norm", "crop_min_scale",
    ),
    "simclr": ("temperature", "proj_hidden", "proj_dim", "proj_layers", "head_norm"),
    "simsiam": ("proj_hidden", "proj_dim", "proj_layers", "pred_hidden", "head_norm", "views"),
    "swav": (
        "n_prototypes", "proj_hidden", "proj_dim", "temperature", "epsilon",
        "sinkhorn_iterations", "n_small_crops", "small_size", "freeze_prototypes_epochs",
        "freeze_prototypes_steps", "queue_length", "queue_start_step", "head_norm",
    ),
    "vicreg": (
        "proj_hidden", "proj_dim", "proj_layers", "sim_coeff", "std_coeff", "cov_coeff",
        "gamma", "eps", "head_norm",
    ),
}  # fmt: skip

NESTED = "method_params"  # a checkpoint's (and a YAML file's) mapping of the method's keys


def method_names() -> list[str]:
    """Every method's `--method` name, sorted (as contrastkit.training.methods.method_names)."""
    return sorted(METHOD_SETTINGS)


def run_settings() -> list[str]:
    """The run's own setting keys (TrainConfig's fields but the nested method_params)."""
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name != NESTED]


def unknown_method(name: str, names: Iterable[str] | None = None) -> ConfigError:
    """The error for `--method NAME` that names no method: the closest name, and all."""
    choices = sorted(METHOD_SETTINGS if names is None else names)
    closest = did_you_mean(name, choices)
    return ConfigError(f"unknown method {name!r}{closest}; choose one of: {', '.join(choices)}")


def check_settings(values: Mapping[str, Any], method: str | None) -> None:
    """ConfigError for an unknown `method` or a key of `values` that is neither a run
    setting nor one of the method's. `method` None (a resumed run whose method is in its
    checkpoint): any method's key passes here, and the checkpoint's method decides later."""
    if method is not None and method not in METHOD_SETTINGS:
        raise unknown_method(method)
    if method is None:
        params = sorted({key for keys in METHOD_SETTINGS.values() for key in keys})
    else:
        params = sorted(METHOD_SETTINGS[method])
    valid = sorted(run_settings()) + params
    nested = values.get(NESTED)
    for key in nested if isinstance(nested, Mapping) else {}:
        if key not in params:  # the nested mapping holds the method's keys only
            raise unknown_setting(str(key), valid)
    for key in values:
        if key != NESTED and key not in valid:
            owners = [name for name, keys in METHOD_SETTINGS.items() if key in keys]
            if owners:  # e.g. `--method byol --set temperature=...`
                raise ConfigError(
                    f"setting {key!r} belongs to {', '.join(owners)}, not to {method}; "
                    f"{method}'s own settings: {', '.join(params)}"
                )
            raise unknown_setting(str(key), valid)
