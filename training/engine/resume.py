"""Resuming a run: which settings a resumed run may change, and how checkpoints written
before a setting existed keep the behaviour they trained with.

`contrastive train --resume` reads the checkpoint's saved config, fills in what older
versions did not save (`with_old_defaults`), and refuses any requested change that would
alter what the run trains (`refuse_changes`).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from contrastkit.training.config import ConfigError, TrainConfig, coerce
from contrastkit.training.methods import get_method

# What a resumed run may change: how long, where and how fast it runs, and what it logs.
# Everything else (method settings, lr, temperature, data, ...) defines the run.
CHANGEABLE = frozenset({
    "out", "epochs", "steps", "device", "workers", "progress", "tensorboard", "compile",
    "channels_last", "deterministic", "log_every", "save_every", "checkpoint_every_steps",
    "knn_every", "knn_k", "knn_t", "knn_max_train", "max_nonfinite", "grad_checkpointing",
    "before_after", "max_skipped",
})  # fmt: skip
# Settings added later, with the behaviour that checkpoints written before them trained
# with: a resumed old run keeps it (LARS was unclipped with eta 0.02 until then; colour
# jitter was 0.4/0.4/0.4/0.1, SimCLR's s = 0.5, at every image size; pairs data trained
# on every row, and skipped samples had no limit).
BEFORE_SETTINGS_EXISTED = {
    "lars_eta": 0.02, "lars_clip": False, "lr_scaling": "linear", "jitter_strength": 0.5,
    "holdout": 0.0, "max_skipped": 1.0,
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
# Until `views` existed, SimSiam trained on BYOL's asymmetric views and DINO on SwAV's
# multi-crop; their papers' own views are the default now.
# SwAV needs no entry: its old checkpoints hold freeze_prototypes_steps=313 and
# queue_length=0 explicitly, and explicit values win over the new epoch count and
# automatic queue.
METHOD_BEFORE_SETTINGS_EXISTED: dict[str, MethodBefore] = {
    "moco": MethodBefore(
        params={"crop_min_scale": 0.08},
        run_if_unset={"optimizer": "lars", "lr": 0.4, "weight_decay": 1e-5},
    ),
    "simsiam": MethodBefore(params={"views": "byol"}),
    "dino": MethodBefore(params={"views": "swav"}),
    "clip": MethodBefore(params={"multi_positive": False}),  # one positive per row then
}

# Optimiser defaults that changed when every method's default became a named recipe
# (solo-learn's CIFAR recipes). Checkpoints written since hold the resolved optimizer, lr
# and weight_decay (Trainer resolves them), so a None in a saved config means "the
# method's default as it was then": these values.
DEFAULTS_BEFORE_RECIPES: dict[str, dict[str, Any]] = {
    "simclr": {"weight_decay": 1e-5},
    "barlow": {"weight_decay": 1e-5},
    "vicreg": {"weight_decay": 1e-5},
    "simsiam": {"lr": 0.05, "weight_decay": 1e-4},
}


def with_old_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's saved config + the behaviour of settings added after it was written
    (BEFORE_SETTINGS_EXISTED, METHOD_BEFORE_SETTINGS_EXISTED, DEFAULTS_BEFORE_RECIPES), so
    it resumes unchanged."""
    saved = {**BEFORE_SETTINGS_EXISTED, **config}
    for key, value in DEFAULTS_BEFORE_RECIPES.get(str(saved.get("method")), {}).items():
        if saved.get(key) is None:
            saved[key] = value
    before = METHOD_BEFORE_SETTINGS_EXISTED.get(str(saved.get("method")))
    params = dict(saved.get("method_params") or {})
    if before is None or set(before.params) <= set(params):
        return saved
    saved["method_params"] = {**before.params, **params}
    for key, value in before.run_if_unset.items():
        if saved.get(key) is None:
            saved[key] = value
    return saved


def refuse_changes(given: dict[str, Any], saved: dict[str, Any]) -> None:
    """Raise ConfigError listing every setting in `given` that differs from the checkpoint's
    `saved` config and may not change on resume (`name: saved -> new`)."""
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
