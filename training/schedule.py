"""Learning-rate schedule: linear warmup, then cosine decay; and the linear scaling rule."""

from __future__ import annotations

import math


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule (Goyal et al. 2017): lr = base_lr * global_batch / 256."""
    return base_lr * global_batch / 256


def lr_at(step: int, total: int, warmup: int, peak: float, min_ratio: float = 0.0) -> float:
    """Learning rate for optimiser step `step` (0-based) of `total`.

    Rises linearly from peak/warmup to `peak` over `warmup` steps, then follows a half
    cosine from `peak` down to `peak * min_ratio` at the last step.
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    floor = peak * min_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
