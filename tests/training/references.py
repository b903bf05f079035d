"""Loop-by-loop references for the losses, written independently of contrastkit.training.losses:
plain Python floats, one anchor at a time, as the papers define them."""

from __future__ import annotations

import math

import torch


def neg_log_softmax_at(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], computed stably from a list of floats."""
    top = max(logits)
    return -(logits[target] - top - math.log(sum(math.exp(x - top) for x in logits)))


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """SimCLR's NT-Xent of [n, d] views z1, z2 at temperature t: the mean over all 2n
    anchors of -log softmax over the 2n - 1 others, at the anchor's other view."""
    rows = [_unit(v) for v in torch.cat([z1, z2]).double().tolist()]
    n = len(rows)
    total = 0.0
    for i, anchor in enumerate(rows):
        others = [j for j in range(n) if j != i]
        logits = [sum(a * b for a, b in zip(anchor, rows[j], strict=True)) / t for j in others]
        total += neg_log_softmax_at(logits, others.index((i + n // 2) % n))
    return total / n


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]
