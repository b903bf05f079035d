"""The pass criteria of `contrastive bench quality --quick` (the CPU quality benchmark).

Pure functions on numbers, so the decisions are testable without training anything.

Standard error of a kNN top-1 accuracy p over n queries (a binomial proportion):
    se(p, n) = sqrt(p (1 - p) / n).
Two independent accuracies a, b (different models, the same n queries) differ by
z = (a - b) / sqrt(se(a)^2 + se(b)^2) standard errors. The queries are shared, so the
two errors are positively correlated and this z is conservative (it overstates the
noise of the difference): a method that passes by it passes by any tighter test.

A method row passes when all of these hold (a criterion without its reference, e.g. no
peer implementation, is "n/a" and does not fail the row):

(a) beats untrained: (acc - u) / sqrt(se(acc)^2 + se(u)^2) > BEAT_UNTRAINED_SE, with u
    the BEST of the untrained encoder's seeds (max, not the mean: the seeds' spread is
    then inside the reference, so a lucky initialisation cannot make a method pass);
(b) loss like the peer's: the mean loss of the last LOSS_WINDOW steps of the last epoch,
    ours and the peer's (both in our loss's units; the formulas are the same, so equal
    recipes give equal values up to augmentation noise and implementation detail):
    |ours - peer| <= max(LOSS_REL_TOL * |peer|, LOSS_ABS_TOL);
(c) kNN like the peer's or better: (acc - peer) / sqrt(se(acc)^2 + se(peer)^2)
    >= -PEER_KNN_SE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

BEAT_UNTRAINED_SE = 3.0  # (a): more than 3 standard errors above the best untrained seed
PEER_KNN_SE = 2.0  # (c): at most 2 standard errors below the peer
# (b): 10% of the peer's loss, or 0.05 absolute for losses near zero (SimSiam's cosine
# ends near -0.9, BYOL's 2 - 2cos near 0.1): the two implementations draw different views
# (PIL per image against batched tensors) and differ in details (warm-up rounding, the
# order of float sums), which move a 20-step mean by a few per cent.
LOSS_REL_TOL = 0.10
LOSS_ABS_TOL = 0.05
LOSS_WINDOW = 20  # steps averaged at each fixed point (the end of every epoch)


def knn_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n queries: sqrt(p (1 - p) / n)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"an accuracy is in [0, 1], got {p}")
    return math.sqrt(p * (1.0 - p) / n)


def margin_se(a: float, b: float, n: int) -> float:
    """(a - b) in standard errors of the difference of two accuracies on n queries each.
    Both 0 or both 1 (no noise at all): +-inf by the sign of a - b, 0 when equal."""
    se = math.hypot(knn_se(a, n), knn_se(b, n))
    if se == 0.0:
        return 0.0 if a == b else math.copysign(math.inf, a - b)
    return (a - b) / se


def window_means(losses: Sequence[float], steps_per_epoch: int, window: int) -> list[float]:
    """The mean of the last `window` steps of every epoch (a final partial epoch too):
    losses [steps] -> [epochs]. Non-finite steps (skipped by the trainer) are left out."""
    if steps_per_epoch < 1 or window < 1:
        raise ValueError("steps_per_epoch and window must be positive")
    out = []
    for end in range(steps_per_epoch, len(losses) + steps_per_epoch, steps_per_epoch):
        end = min(end, len(losses))
        tail = [x for x in losses[max(0, end - window) : end] if math.isfinite(x)]
        out.append(sum(tail) / len(tail) if tail else math.nan)
        if end == len(losses):
            break
    return out


def loss_close(ours: float, peer: float) -> bool:
    """(b): |ours - peer| <= max(LOSS_REL_TOL * |peer|, LOSS_ABS_TOL)."""
    if not (math.isfinite(ours) and math.isfinite(peer)):
        return False
    return abs(ours - peer) <= max(LOSS_REL_TOL * abs(peer), LOSS_ABS_TOL)


def verdicts(
    acc: float | None,
    untrained: Sequence[float],
    n: int,
    *,
    loss: float | None,
    peer_loss: float | None,
    peer_acc: float | None,
) -> dict[str, Any]:
    """One method's criteria -> {"beats_untrained", "loss_vs_peer", "knn_vs_peer":
    "PASS" | "FAIL" | "n/a", the margins in SE, "overall"}. No accuracy (a failed run):
    every criterion FAIL. No peer figures: (b) and (c) are n/a."""
    out: dict[str, Any] = {"untrained_best": max(untrained) if untrained else None}
    if acc is None:
        out |= {"beats_untrained": "FAIL", "loss_vs_peer": "FAIL", "knn_vs_peer": "FAIL"}
        out["overall"] = "FAIL"
        return out
    best = max(untrained)
    out["untrained_margin_se"] = margin_se(acc, best, n)
    out["beats_untrained"] = _word(out["untrained_margin_se"] > BEAT_UNTRAINED_SE)
    if peer_loss is None or loss is None:
        out["loss_vs_peer"] = "n/a" if peer_loss is None else "FAIL"
    else:
        out["loss_vs_peer"] = _word(loss_close(loss, peer_loss))
    if peer_acc is None:
        out["knn_vs_peer"] = "n/a"
    else:
        out["peer_margin_se"] = margin_se(acc, peer_acc, n)
        out["knn_vs_peer"] = _word(out["peer_margin_se"] >= -PEER_KNN_SE)
    keys = ("beats_untrained", "loss_vs_peer", "knn_vs_peer")
    out["overall"] = "FAIL" if any(out[k] == "FAIL" for k in keys) else "PASS"
    return out


def _word(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
