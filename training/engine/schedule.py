"""Learning-rate schedule: linear warmup, then cosine decay; and the batch scaling rules."""

from __future__ import annotations

import math


def scaled_lr(base_lr: float, global_batch: int, rule: str = "linear") -> float:
    """The peak lr for `global_batch` images per step from `base_lr` per 256 images.

    "linear" (Goyal et al. 2017; SimCLR's LARS runs): base_lr * global_batch / 256.
    "sqrt" (SimCLR appendix B.1, for small batches / long runs): base_lr * sqrt(B / 256).
    Both give base_lr at batch 256."""
    if rule == "linear":
        return base_lr * global_batch / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(global_batch / 256)
    raise ValueError(f"lr_scaling must be linear or sqrt, got {rule!r}")


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
