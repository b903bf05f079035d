"""`contrastive bench finetune`: the JSON of a tiny run, and the pieces its figures rest on
(the step clock, pooling of rounds, the peer's data feed and arguments)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from contrastkit.training.bench import finetune as bench
from contrastkit.training.bench.finetune_setup import FinetuneSettings, StepClock, pooled
from contrastkit.training.bench.peer_openclip import Feed, peer_args
from contrastkit.training.data import DataError
from contrastkit.training.data.idx import FASHION_MNIST_DIR
from tests.training.bench.runner import run_bench


def _settings(**kw: Any) -> FinetuneSettings:
    values: dict[str, Any] = {
        "arch": "tiny", "batch_size": 8, "warmup": 1, "steps": 2, "precision": "bf16",
        "device": "cpu", "workers": 0, "lr": 5e-4, "weight_decay": 0.1,
    }  # fmt: skip
    return FinetuneSettings(**(values | kw))


def _toy_optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def test_clock_times_from_the_end_of_the_warmup_to_the_last_timed_step() -> None:
    opt, calls = _toy_optimizer(), []
    clock = StepClock(torch.device("cpu"), warmup=2, timed=3, on_step=lambda: calls.append(1))
    clock.attach(opt)
    for _ in range(5):
        opt.step()
    r = clock.result(batch_size=4)
    assert len(calls) == 5 and len(clock.stamps) == 2
    assert r["timed_steps"] == 3 and r["warmup_steps"] == 2
    assert r["images_per_s"] == pytest.approx(3 * 4 / r["timed_seconds"])


def test_clock_refuses_a_loop_that_took_fewer_steps() -> None:
    opt = _toy_optimizer()
    clock = StepClock(torch.device("cpu"), warmup=1, timed=3)
    clock.attach(opt)
    opt.step()
    opt.step()
    with pytest.raises(RuntimeError, match="2 optimiser steps, not 4"):
        clock.result(8)
    with pytest.raises(ValueError):
        StepClock(torch.device("cpu"), warmup=0, timed=1)


def test_pooled_figure_is_all_images_over_all_timed_seconds() -> None:
    runs = [
        {"images_per_s": 10.0, "timed_seconds": 2.0, "timed_steps": 5, "loss_last": 1.5},
        {"images_per_s": 40.0, "timed_seconds": 1.0, "timed_steps": 10, "loss_last": 1.0},
    ]
    p = pooled(runs, batch_size=4)
    assert p["images_per_s"] == pytest.approx(60 / 3.0)
    assert (p["timed_seconds"], p["timed_steps"], p["runs"]) == (3.0, 15, 2)
    assert p["images_per_s_each"] == [10.0, 40.0] and p["loss_last"] == 1.5


def test_settings_alternate_the_order_and_share_one_peak_lr() -> None:
    s = _settings(batch_size=512, lr=5e-4, rounds=3)
    assert [s.order(r) for r in range(3)] == [("ours", "peer"), ("peer", "ours"), ("ours", "peer")]
    assert s.peak_lr == pytest.approx(1e-3) and s.total_steps == 3


def test_feed_gives_exactly_the_steps_asked_passing_the_loader_again() -> None:
    feed = Feed([1, 2], steps=5, batch_size=8)  # type: ignore[arg-type]
    assert list(feed.dataloader) == [1, 2, 1, 2, 1]
    assert (feed.num_batches, feed.num_samples) == (5, 40)
    with pytest.raises(DataError, match="no batch"):
        list(Feed([], steps=1, batch_size=8))  # type: ignore[arg-type]


def test_peer_args_carry_our_settings_through_open_clip_trains_parser(tmp_path: Path) -> None:
    args = peer_args(_settings(batch_size=64, workers=3), tmp_path / "m", tmp_path / "p.csv")
    assert args.model == f"local-dir:{tmp_path / 'm'}" and args.dataset_type == "csv"
    assert (args.csv_img_key, args.csv_caption_key, args.csv_separator) == ("path", "caption", ",")
    assert (args.batch_size, args.workers, args.precision) == (64, 3, "amp_bf16")
    assert args.lr == pytest.approx(5e-4 * 64 / 256) and args.wd == 0.1
    assert (args.beta1, args.beta2, args.eps, args.warmup) == (0.9, 0.98, 1e-6, 0)
    assert (args.rank, args.world_size, args.distributed, args.distill) == (0, 1, False, False)


@pytest.mark.slow
@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="Fashion-MNIST not installed")
def test_tiny_run_writes_both_sides_with_positive_throughput_and_finite_losses(
    tmp_path: Path,
) -> None:
    path = tmp_path / "finetune.json"
    # in-process loading (no worker start-up) and one thread: seconds on a busy 2-core box
    flags = "--quick --device cpu --workers 0 --threads 1 --rounds 1"
    result, printed = run_bench(bench, flags, path)
    assert result["benchmark"] == "finetune" and result["device"] == "cpu"
    s = result["settings"]
    assert (s["arch"], s["batch_size"], s["warmup"], s["steps"]) == ("tiny", 8, 1, 2)
    assert result["inputs"]["rows"] == 3 * 8
    for side in ("ours", "peer"):
        r = result[side]
        assert r["images_per_s"] > 0 and r["timed_steps"] == 2
        assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"])
    assert result["ratio"] == pytest.approx(
        result["ours"]["images_per_s"] / result["peer"]["images_per_s"]
    )
    assert result["peer"]["loop"] == "open_clip_train.train.train_one_epoch"
    assert "ours / open_clip" in printed
