"""Samples left out of a training set, and the limit on how many may be.

A few bad rows in a user's own data (a deleted image, an empty caption, a corrupt JPEG)
should not stop a run, so they are skipped and counted. Many of them usually mean a
wrong path or a broken export, which training through would hide: past `max_skipped`
of the data set the run stops with one line that names the reasons.
"""

from __future__ import annotations

import math

from contrastkit.training.data.base import DataError, TrainData

# Below this many skipped samples a run never stops: a handful of bad files in a small set
# is a fraction well over any sensible max_skipped, and still worth training through.
MIN_SKIP_LIMIT = 10


def describe_skips(counts: dict[str, int], examples: dict[str, str]) -> str:
    """'2 (missing file, e.g. a.png); 1 (empty caption, e.g. pairs.csv:7)'."""
    parts = []
    for why, n in counts.items():
        example = examples.get(why)
        parts.append(f"{n} ({why}, e.g. {example})" if example else f"{n} ({why})")
    return "; ".join(parts)


def skip_limit(size: int, max_skipped: float) -> int:
    """Skipped samples a data set of `size` samples may have: max(10, max_skipped * size)."""
    # The tolerance keeps a fraction written in decimals exact: 0.29 * 100 is 28.999...
    return max(MIN_SKIP_LIMIT, math.floor(max_skipped * size + 1e-6))


def fraction_to_allow(skipped: int, size: int) -> float:
    """The smallest max_skipped in steps of 0.01 (at most 1) that allows `skipped`."""
    return min(math.ceil(skipped * 100 / max(size, 1) - 1e-9), 100) / 100


def check_skipped(data: TrainData, max_skipped: float) -> None:
    """Raise DataError (one line) when `data` skipped more samples than max_skipped allows."""
    counts = data.skipped_samples()
    skipped, size = sum(counts.values()), data.source_size()
    if skipped <= skip_limit(size, max_skipped):
        return
    raise DataError(
        f"{skipped} of {size} samples were skipped: "
        f"{describe_skips(counts, data.skip_examples())}; that is more than max_skipped="
        f"{max_skipped:g} of the data set allows; fix or remove those samples, or raise "
        f"the limit with --set max_skipped={fraction_to_allow(skipped, size):g}"
    )
