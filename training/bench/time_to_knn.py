"""Time to a kNN accuracy: a method (SimCLR unless told) through the real Trainer, with
online kNN every epoch.

The figure PERFORMANCE.md compares with the peer (84.7% after 20 epochs in 188 s on
Fashion-MNIST): weighted kNN (k = 200, t = 0.1) of the backbone's features, bank = the
training set, queries = the test set, after every epoch. Its references, from the same
run: kNN on raw pixels and on the untrained encoder.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from contrastkit.training.bench.pipelines import BenchSettings, build_trainer
from contrastkit.training.data import load_knn_data
from contrastkit.training.engine.trainer import Trainer
from contrastkit.training.evaluate.knn import knn_accuracy

KNN_K, KNN_T = 200, 0.1


def raw_pixel_knn(data: str, image_size: int, device: torch.device) -> dict[str, Any]:
    """kNN top-1 with the flattened raw pixels (uint8 / 255) as the features."""
    loaded = load_knn_data(data, image_size=image_size)
    if loaded is None:
        raise ValueError(f"--data {data!r} has no labels: no kNN figure")
    bank, queries = loaded
    t0 = time.perf_counter()
    acc = knn_accuracy(
        bank.images.flatten(1).to(device).float().div_(255),
        bank.labels.to(device),
        queries.images.flatten(1).to(device).float().div_(255),
        queries.labels,
        len(bank.classes),
        KNN_K,
        KNN_T,
    )
    return {
        "top1": acc,
        "bank": int(bank.images.shape[0]),
        "queries": int(queries.images.shape[0]),
        "seconds": time.perf_counter() - t0,
    }


def _knn_now(trainer: Trainer) -> float | None:
    return trainer.knn.maybe_run(trainer.method, trainer._autocast)


def _install_recorder(
    trainer: Trainer, time_limit: float | None, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Record every kNN the loop logs (epoch, top-1, train and wall seconds) and stop the
    run at the first epoch end past `time_limit` wall seconds. Wraps the loop's own kNN
    logging, so the figures are exactly what a training run reports."""
    records: list[dict[str, Any]] = []
    start = time.perf_counter()

    def record(trainer: Trainer) -> None:
        if trainer.last_knn is None:
            return
        wall = time.perf_counter() - start
        records.append(
            {
                "epoch": trainer.epoch,
                "top1": trainer.last_knn,
                "train_seconds": trainer.train_seconds,
                "wall_seconds": wall,
            }
        )
        say(
            f"kNN epoch {trainer.epoch}: top-1 {trainer.last_knn:.4f}, "
            f"train {trainer.train_seconds:.1f} s, wall {wall:.1f} s"
        )
        if time_limit is not None and wall > time_limit:
            say(f"kNN run: past its time limit of {time_limit:.0f} s; stopping")
            trainer.request_stop()  # the loop's own stop: finish the step, save, return

    trainer.knn_callbacks.append(record)
    return records


def time_to_target(records: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first record with top-1 >= target, or None."""
    return next((r for r in records if r["top1"] >= target), None)


def knn_run(
    s: BenchSettings,
    epochs: int,
    target: float,
    time_limit: float | None,
    say: Callable[[str], None],
    method: str = "simclr",
    *,
    overrides: dict[str, Any] | None = None,
    raw_pixels: bool = True,
    untrained: bool = True,
    before: Callable[[Trainer], dict[str, Any]] | None = None,
    after: Callable[[Trainer], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train `method` for `epochs` with kNN after each -> the curve and its references.

    `overrides`: more run settings for the trainer (e.g. the LARS variant). `raw_pixels`
    False skips the raw-pixel reference (a caller running many methods measures it once;
    raw_pixel_top1, bank and queries are then None); `untrained` False likewise skips the
    untrained encoder's kNN (untrained_top1 None). `before(trainer)` runs on the untrained
    model, `after(trainer)` on the trained one before its scratch folder goes (e.g. a linear
    probe of each); their dicts join the result.
    """
    settings: dict[str, Any] = {
        "epochs": epochs,
        "steps": None,
        "knn_every": 1,
        "knn_k": KNN_K,
        "knn_t": KNN_T,
        "knn_max_train": 1 << 31,
        "save_every": epochs + 1,
    }
    settings.update(overrides or {})
    out = Path(tempfile.mkdtemp(prefix="bench-knn-"))
    try:
        trainer = build_trainer(s, method, out / "run", **settings)
        raw: dict[str, Any] = {"top1": None, "bank": None, "queries": None}
        if raw_pixels:
            say("kNN on raw pixels ...")
            raw = raw_pixel_knn(s.data, s.image_size, trainer.device)
            say(f"kNN on raw pixels: {raw['top1']:.4f}")
        t0 = time.perf_counter()
        untrained_top1 = _knn_now(trainer) if untrained else None
        eval_seconds = time.perf_counter() - t0
        if untrained:
            shown = "n/a" if untrained_top1 is None else f"{untrained_top1:.4f}"
            say(f"kNN of the untrained encoder: {shown} ({eval_seconds:.1f} s an evaluation)")
        extra = before(trainer) if before is not None else {}
        records = _install_recorder(trainer, time_limit, say)
        result = trainer.fit()
        extra |= after(trainer) if after is not None else {}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    hit = time_to_target(records, target)
    # The loop reports both its own stop request (the time limit) and SIGINT/SIGTERM as
    # "signal"; a caller running several methods must tell them apart, to stop on a signal.
    by_limit = bool(records) and time_limit is not None and records[-1]["wall_seconds"] > time_limit
    stopped = (
        result.stopped if result.stopped != "signal" else "time limit" if by_limit else "signal"
    )
    return {
        "method": method,
        "k": KNN_K,
        "t": KNN_T,
        "bank": raw["bank"],
        "queries": raw["queries"],
        "epochs_requested": epochs,
        "epochs_done": result.epochs,
        "stopped": stopped,
        "time_limit_s": time_limit,
        "per_epoch": records,
        "final_top1": records[-1]["top1"] if records else None,
        "images_per_second": result.images_per_second,
        "eval_seconds": eval_seconds,
        "target": target,
        "reached_target": hit is not None,
        "time_to_target_train_s": hit["train_seconds"] if hit else None,
        "time_to_target_wall_s": hit["wall_seconds"] if hit else None,
        "epoch_of_target": hit["epoch"] if hit else None,
        "raw_pixel_top1": raw["top1"],
        "untrained_top1": untrained_top1,
        "loss": result.loss if result.loss is None or math.isfinite(result.loss) else None,
        **extra,
    }
