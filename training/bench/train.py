"""`contrastive bench train`: training throughput, each figure beside its reference.

In one run, on one device, with the engine's own step code (Trainer._train_step):
(a) SimCLR's model step alone, on views made before timing (the ceiling);
(b) our end-to-end loop: device-resident data + batched augmentation + step; (b)/(a);
(c) the peer's pipeline: a DataLoader with CPU workers applying torchvision v2 per
    image, then the same step; (b)/(c);
(d) the step time of MoCo, BYOL, SwAV and CLIP against SimCLR's;
(e) optionally, SimCLR with online kNN every epoch: accuracy against train seconds, the
    time to a target accuracy, and kNN on raw pixels and on the untrained encoder.
(a)-(d) run in interleaved rounds, so drift of a shared machine hits all figures alike.
img/s counts images (samples), not views. Step-only figures are B / median step time;
pipeline figures (b, c) are images / total time over their timed windows, because a
DataLoader delivers in bursts and a median of its steps would flatter it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from contrastkit.training.bench import flags
from contrastkit.training.bench.peer import Peer
from contrastkit.training.bench.pipelines import (
    BenchSettings,
    EndToEnd,
    Pipeline,
    StepOnly,
    build_trainer,
    measure,
)
from contrastkit.training.bench.report import comparisons, pick_default, print_report
from contrastkit.training.bench.time_to_knn import knn_run
from contrastkit.training.config import ConfigError
from contrastkit.training.data import DataError
from contrastkit.training.data.idx import FASHION_MNIST_DIR
from contrastkit.training.encoders.environment import environment, timestamp, write_json
from contrastkit.training.engine.runstate import train_device

# its flags live in contrastkit.training.bench.flags, which `--help` imports without torch
add_arguments = flags.train


def settings_from_args(args: argparse.Namespace, device: torch.device) -> BenchSettings:
    """The run's settings: flags, else defaults for the device (or for --quick)."""
    gpu, q = device.type == "cuda", bool(args.quick)
    default_data = "fashion-mnist" if Path(FASHION_MNIST_DIR).is_dir() else "digits"
    cores = len(os.sched_getaffinity(0))
    methods = [m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "simclr"]
    return BenchSettings(
        data=pick_default(args.data, default_data, default_data, "digits", gpu, q),
        backbone=pick_default(args.backbone, "resnet18", "resnet18", "tiny", gpu, q),
        batch_size=pick_default(args.batch_size, 512, 32, 16, gpu, q),
        image_size=args.image_size,
        device=args.device,
        precision=args.precision,
        compile=bool(args.compile),
        clip_text_tower=args.clip_text_tower,
        workers=pick_default(
            args.workers, min(15, max(1, cores - 1)), max(1, cores - 1), 1, gpu, q
        ),
        rounds=pick_default(args.rounds, 3, 4, 2, gpu, q),
        warmup=pick_default(args.warmup, 10, 1, 1, gpu, q),
        iters=pick_default(args.iters, 20, 4, 2, gpu, q),
        e2e_iters=pick_default(args.e2e_iters, 60, 6, 2, gpu, q),
        view_pool=4 if gpu else 2,
        threads=torch.get_num_threads(),
        methods=methods,
    )


def say(message: str) -> None:
    print(f"bench train: {message}", file=sys.stderr, flush=True)


def _step_only(times: list[float], batch: int) -> dict[str, Any]:
    med = statistics.median(times)
    return {
        "img_per_s": batch / med,
        "median_step_s": med,
        "mean_img_per_s": batch * len(times) / sum(times),
        "timed_steps": len(times),
    }


def _pipeline(times: list[float], batch: int) -> dict[str, Any]:
    return {
        "img_per_s": batch * len(times) / sum(times),
        "seconds": sum(times),
        "median_step_s": statistics.median(times),
        "timed_steps": len(times),
    }


def throughput(s: BenchSettings, scratch: Path) -> dict[str, Any]:
    """(a)-(d): build one trainer per method, then time every pipeline in rounds."""
    say(f"building trainers: simclr, {', '.join(s.methods)} ({s.backbone}, batch {s.batch_size})")
    simclr = build_trainer(s, "simclr", scratch / "simclr")
    pipes: list[Pipeline] = [StepOnly("simclr", simclr, s)]
    pipes += [StepOnly(m, build_trainer(s, m, scratch / m), s) for m in s.methods]
    peer = Peer("peer", simclr, s)
    pipes += [EndToEnd("end_to_end", simclr, s), peer]
    try:
        times = measure(pipes, s.rounds, simclr.device, say)
    finally:
        peer.close()
    b = s.batch_size
    return {
        "step_only": {"method": "simclr", **_step_only(times["simclr"], b)},
        "end_to_end": _pipeline(times["end_to_end"], b),
        "peer": {
            "workers": s.workers,
            "transforms": "torchvision.transforms.v2, per image",
            **_pipeline(times["peer"], b),
        },
        "methods": {m: _step_only(times[m], b) for m in ["simclr", *s.methods]},
    }


def run(args: argparse.Namespace) -> int:
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        device = train_device(args.device)
        s = settings_from_args(args, device)
        knn_epochs = pick_default(
            args.knn_epochs, 20, 0, 0, device.type == "cuda", bool(args.quick)
        )
        env = environment(device)
        path = Path(args.json) if args.json else Path(args.out) / f"train-{timestamp(env)}.json"
        result: dict[str, Any] = {"benchmark": "train", **env, "settings": vars(s).copy()}
        result["settings"] |= {"knn_epochs": knn_epochs, "quick": bool(args.quick)}
        write_json(path, result)
        say(f"{device} ({env['device_name']}), data {s.data}; results -> {path}")
        scratch = Path(tempfile.mkdtemp(prefix="bench-train-"))
        try:
            result |= throughput(s, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        result["comparisons"] = comparisons(result)
        write_json(path, result)  # the throughput figures survive a kNN run cut short
        if knn_epochs > 0:
            result["knn"] = knn_run(s, knn_epochs, args.knn_target, args.knn_time_limit, say)
            result["comparisons"] = comparisons(result)
            write_json(path, result)
    except (ConfigError, DataError, ValueError) as e:
        print(f"contrastive bench train: {e}", file=sys.stderr)
        return 2
    print_report(result)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m contrastkit.training.bench.train` (the same as `contrastive bench train`)."""
    parser = argparse.ArgumentParser(
        prog="python -m contrastkit.training.bench.train", description=__doc__
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
