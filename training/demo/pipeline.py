"""The demo's steps: measure the initial model, train within the time budget through
`contrastive train` (contrastkit.training.cli.main), measure the trained model (figures.py draws,
summary.py summarises).

The number of training steps is chosen from the time left: a timed step of the real
model at the real batch size (on 1 CPU thread or the default count, whichever is
faster), plus the measured cost of a kNN evaluation after each epoch.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from contrastkit.training.config import TrainConfig, build_config
from contrastkit.training.data import Batch, load_data, parse_spec
from contrastkit.training.data.size import image_size_of
from contrastkit.training.demo.analysis import Analysis, DemoData, analyse, prepare
from contrastkit.training.demo.model import backbone_spec, build_method, rebuild
from contrastkit.training.engine.checkpoint import load_checkpoint
from contrastkit.training.methods import get_method

log = logging.getLogger("contrastive.demo")
RUN_FILES = ("last.pt", "metrics.jsonl", "config.json")


@dataclass(frozen=True)
class Preset:
    """Per data set: image size, batch size, 2-D map points, kNN bank cap."""

    image_size: int
    batch_size: int
    map_points: int
    knn_max_train: int


PRESETS = {
    "digits": Preset(image_size=16, batch_size=128, map_points=360, knn_max_train=60000),
    "fashion-mnist": Preset(image_size=20, batch_size=128, map_points=800, knn_max_train=5000),
}
MIN_STEPS, MAX_EPOCHS = 20, 60
FIGURE_SECONDS = 6.0  # drawing and saving the five figures on a 2-core CPU
# The Trainer's wall time per step vs our bare step: the step itself costs the same
# (measured); the rest is the checkpoint each epoch, logging, and some slack for load.
OVERHEAD = 1.2


@dataclass
class DemoRun:
    """What the demo measured, for the figures and the summary."""

    cfg: TrainConfig
    data: DemoData
    before: Analysis
    after: Analysis
    run_dir: Path
    steps: int
    train_seconds: float
    started: float
    threads: int


def preset_for(data: str) -> Preset:
    kind = parse_spec(data).kind
    if kind not in PRESETS:
        raise ValueError(f"the demo runs on digits or fashion-mnist[:DIR], not {data!r}")
    return PRESETS[kind]


def planned_config(data: str, run_dir: Path, seed: int) -> tuple[TrainConfig, Any]:
    """The SimCLR run the demo trains (steps are decided later)."""
    p = preset_for(data)
    values = {
        "method": "simclr", "data": data, "backbone": "tiny", "out": str(run_dir),
        "image_size": p.image_size, "batch_size": p.batch_size, "seed": seed,
        "device": "cpu", "knn_max_train": p.knn_max_train, "tensorboard": False,
        "progress": False, "workers": 0,
    }  # fmt: skip
    return build_config(values, get_method("simclr").Params)


def clear_run_dir(run_dir: Path) -> None:
    """Remove a previous demo run; refuse to delete a folder that is not a run."""
    if not run_dir.exists():
        return
    if any(run_dir.iterdir()) and not any((run_dir / f).exists() for f in RUN_FILES):
        raise ValueError(f"{run_dir} exists and is not a training run folder; move it away")
    shutil.rmtree(run_dir)


def step_seconds(method: Any, data: DemoData, cfg: TrainConfig) -> float:
    """Seconds of one training step (views, forward, backward, update) at the run's
    batch size, timed on a copy of the model: the fastest of 3 steps after a warm-up one,
    i.e. what the machine can do, not what a burst of load from elsewhere left of it."""
    from contrastkit.training.augment import Augmenter

    model = copy.deepcopy(method).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    images = data.map_images.repeat(1 + cfg.batch_size // len(data.map_images), 1, 1, 1)
    batch = Batch(images[: cfg.batch_size], None, None, torch.arange(cfg.batch_size))
    augment = Augmenter("cpu", seed=0)
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        loss = model.loss(model.make_views(batch, augment)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def pick_threads(method: Any, data: DemoData, cfg: TrainConfig) -> tuple[int, float]:
    """Set torch's CPU threads to 1 or the default, whichever steps faster; returns
    (threads, seconds a step). On a machine busy with other work, OpenMP threads that
    wait on each other can make a small model's step 10-20x slower than one thread."""
    timings = {}
    for n in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(n)
        timings[n] = step_seconds(method, data, cfg)
    best = min(timings, key=timings.__getitem__)
    torch.set_num_threads(best)
    return best, timings[best]


def choose_steps(budget: float, step: float, knn: float, steps_per_epoch: int) -> int:
    """The most steps s whose cost fits `budget` seconds, at least MIN_STEPS: s steps of
    `step` seconds (x OVERHEAD) plus a kNN evaluation of `knn` seconds after each epoch
    and at the end, i.e. s * (step * OVERHEAD + knn / steps_per_epoch) + knn <= budget."""
    per_step = step * OVERHEAD + knn / steps_per_epoch
    steps = int(max(budget - knn, 0.0) / per_step)
    return max(MIN_STEPS, min(steps, MAX_EPOCHS * steps_per_epoch))


def log_every(steps: int, cfg: TrainConfig) -> int:
    """About 50 loss/lr points per run, but at least 4 within the first epoch (the lr
    warm-up) so the curves show it."""
    per_epoch = load_data(cfg.data, image_size=image_size_of(cfg)).steps_per_epoch(cfg.batch_size)
    return max(1, min(steps // 50, per_epoch // 4))


def train(cfg: TrainConfig, steps: int) -> float:
    """Run `contrastive train` for `steps` steps; returns the wall seconds it took."""
    from contrastkit.training.cli import main

    args = ["train", "--method", "simclr", "--backbone", cfg.backbone, "--data", cfg.data,
            "--batch-size", str(cfg.batch_size), "--steps", str(steps), "--out", cfg.out,
            "--seed", str(cfg.seed), "--device", cfg.device]  # fmt: skip
    sets = {"image_size": cfg.image_size, "knn_max_train": cfg.knn_max_train,
            "log_every": log_every(steps, cfg), "tensorboard": "false", "progress": "false",
            "workers": cfg.workers}  # fmt: skip
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    log.info("training: contrastive %s", " ".join(args))
    t0 = time.perf_counter()
    code = main(args)
    if code != 0:
        raise RuntimeError(f"contrastive train exited with status {code}")
    return time.perf_counter() - t0


def run(
    data_spec: str, out: Path, seconds: float, seed: int = 0, steps: int | None = None
) -> DemoRun:
    """Everything up to the figures; see the module docstring. `steps`, when given, replaces
    the step count the time budget would choose. Leaves torch's thread count as it found
    it."""
    threads = torch.get_num_threads()
    try:
        return _run(data_spec, out, seconds, seed, steps)
    finally:
        torch.set_num_threads(threads)


def _run(data_spec: str, out: Path, seconds: float, seed: int, fixed: int | None) -> DemoRun:
    started = time.perf_counter()
    run_dir = out / "run"
    clear_run_dir(run_dir)
    cfg, params = planned_config(data_spec, run_dir, seed)
    preset = preset_for(data_spec)
    data = prepare(cfg, cfg.batch_size, preset.map_points)
    initial = build_method(cfg, params, backbone_spec(cfg))
    threads, step = pick_threads(initial, data, cfg)
    t0 = time.perf_counter()
    before = analyse(initial, data, cfg)
    analysis_seconds = time.perf_counter() - t0
    spent = time.perf_counter() - started
    budget = seconds - spent - analysis_seconds - FIGURE_SECONDS
    steps = fixed
    if steps is None:  # what fits the time budget (the data loaded again to count its steps)
        train_data = load_data(cfg.data, image_size=image_size_of(cfg))
        steps = choose_steps(
            budget, step, before.knn_seconds, train_data.steps_per_epoch(cfg.batch_size)
        )
    log.info("%.1fs left for training: %.3fs a step on %d thread(s), kNN %.1fs -> %d steps",
             budget, step, threads, before.knn_seconds, steps)  # fmt: skip
    train_seconds = train(cfg, steps)
    checkpoint = load_checkpoint(run_dir)
    after = analyse(rebuild(checkpoint, trained=True), data, cfg)
    return DemoRun(cfg, data, before, after, run_dir, checkpoint.step, train_seconds,
                   started, threads)  # fmt: skip
