"""The training pipelines that `contrastive bench train` times, side by side.

Three ways to feed the engine's one optimiser step (Trainer._train_step):

- StepOnly: views made once, before timing, and cycled: the model step alone (figure a/d);
- EndToEnd: our loop: batches indexed on the device + batched augmentation + step (b);
- Peer (contrastkit.training.bench.peer): a DataLoader with CPU workers and per-image torchvision
  transforms, then the same step (c).

`measure` runs them in interleaved rounds (a window of each in turn), so a machine whose
speed drifts slows every figure alike and the ratios hold.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from contrastkit.training.config import build_config
from contrastkit.training.data import Batch
from contrastkit.training.engine.trainer import Trainer
from contrastkit.training.methods import get_method
from contrastkit.training.methods.base import Views


@dataclass
class BenchSettings:
    """What every trainer of one bench run shares (the JSON's "settings")."""

    data: str
    backbone: str
    batch_size: int
    image_size: int = 32
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    seed: int = 0
    clip_text_tower: str = "transformer"
    workers: int = 1  # the peer's DataLoader workers
    rounds: int = 2
    warmup: int = 1  # untimed steps before a pipeline's first window
    iters: int = 2  # timed steps per window, step-only pipelines
    e2e_iters: int = 2  # timed steps per window, end-to-end pipelines
    view_pool: int = 2  # distinct pre-made view sets the step-only pipelines cycle through
    threads: int = 0  # torch intra-op threads of the main process (recorded, not set here)
    methods: list[str] = field(default_factory=list)


def build_trainer(s: BenchSettings, method: str, out: Path, **extra: Any) -> Trainer:
    """A real Trainer for `method` (no kNN, TensorBoard or progress bar unless `extra`
    sets them); `out` is a scratch run folder."""
    values: dict[str, Any] = {
        "method": method,
        "data": s.data,
        "backbone": s.backbone,
        "batch_size": s.batch_size,
        "image_size": s.image_size,
        "device": s.device,
        "precision": s.precision,
        "compile": s.compile,
        "seed": s.seed,
        "out": str(out),
        "steps": 1_000_000,  # outlasts any bench: the lr schedule never runs out
        "knn_every": 0,
        "tensorboard": False,
        "progress": False,
    }
    if method == "clip":
        values["text_tower"] = s.clip_text_tower
    values.update(extra)
    cfg, params = build_config(values, get_method(method).Params)
    return Trainer(cfg, params)


def step_on_views(trainer: Trainer, views: Views) -> None:
    """One engine step on ready views; advances trainer.step like the loop does."""
    trainer.step_on_views(views)
    trainer.step += 1


def batches_forever(trainer: Trainer) -> Iterator[Batch]:
    """The trainer's own batches, epoch after epoch (the loop's data path)."""
    epoch = 0
    while True:
        yield from trainer.data.batches(epoch, trainer.cfg.batch_size, trainer.device)
        epoch += 1


class Pipeline(Protocol):
    name: str
    timed: int  # timed steps per window

    def warm(self, first: bool) -> int: ...  # untimed steps before a window
    def step(self) -> None: ...


class StepOnly:
    """The engine's step on views made before timing (no data, no augmentation)."""

    def __init__(self, name: str, trainer: Trainer, s: BenchSettings) -> None:
        self.name, self.trainer, self.timed, self.warmup = name, trainer, s.iters, s.warmup
        batches = batches_forever(trainer)
        with torch.no_grad():
            self.pool = [trainer.make_views(next(batches)) for _ in range(max(1, s.view_pool))]
        self.i = 0

    def warm(self, first: bool) -> int:
        return self.warmup if first else 0

    def step(self) -> None:
        self.i += 1
        step_on_views(self.trainer, self.pool[self.i % len(self.pool)])


class EndToEnd:
    """Our loop's path: the data's device batches, the method's batched views, the step."""

    def __init__(self, name: str, trainer: Trainer, s: BenchSettings) -> None:
        self.name, self.trainer, self.timed, self.warmup = name, trainer, s.e2e_iters, s.warmup
        self.batches = batches_forever(trainer)

    def warm(self, first: bool) -> int:
        return self.warmup if first else 0

    def step(self) -> None:
        self.trainer._train_step(next(self.batches))
        self.trainer.step += 1


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def run_window(p: Pipeline, first: bool, sync: Callable[[], None]) -> list[float]:
    """Warm-up steps, then p.timed steps, each timed alone (device synchronised) -> s."""
    for _ in range(p.warm(first)):
        p.step()
    sync()
    times = []
    for _ in range(p.timed):
        t0 = time.perf_counter()
        p.step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def measure(
    pipelines: list[Pipeline], rounds: int, device: torch.device, say: Callable[[str], None]
) -> dict[str, list[float]]:
    """Interleaved rounds: a window of every pipeline in turn -> per-step seconds each."""
    sync = _sync(device)
    times: dict[str, list[float]] = {p.name: [] for p in pipelines}
    for r in range(rounds):
        for p in pipelines:
            window = run_window(p, r == 0, sync)
            times[p.name] += window
            say(f"round {r + 1}/{rounds} {p.name}: median step {statistics.median(window):.4f} s")
    return times
