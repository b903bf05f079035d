"""`contrastive bench finetune`: fine-tuning a whole open_clip model, ours against open_clip's loop.

In one run, on one device, with the same model (open_clip ARCH, random weights from a
fixed seed, saved in local-dir format: nothing downloads), the same image-caption pairs,
batch, precision, lr schedule and number of steps:

- ours: the Trainer (`contrastive train --method clip --init-from open_clip:local-dir:DIR
  --data pairs:CSV`), with before_after, kNN and held-out rows off;
- open_clip's: open_clip_train.train.train_one_epoch (contrastkit.training.bench.peer_openclip).

Both are timed alike (finetune_setup.StepClock): images/s = timed steps x batch / the
wall time from the end of optimiser step `warmup` to the end of step `warmup + steps`,
the device synchronised at both ends. That span holds everything each loop does for
those steps: data loading, augmentation, tokenisation, forward, backward, optimiser, its
own logging. The loss of the first and of the last step of each is shown too (same lr
and objective; not expected equal: the augmentation and the data order differ).
Goal: ours >= 1.0x open_clip's images/s.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from contrastkit.training.bench import flags
from contrastkit.training.bench.finetune_setup import (
    TINY,
    FinetuneSettings,
    StepClock,
    absolute_pairs,
    pooled,
    write_model,
    write_pairs,
)
from contrastkit.training.bench.report import pick_default
from contrastkit.training.config import ConfigError, build_config
from contrastkit.training.data import DataError
from contrastkit.training.data.idx import FASHION_MNIST_DIR
from contrastkit.training.encoders.environment import (
    environment,
    markdown_table,
    timestamp,
    write_json,
)
from contrastkit.training.engine.runstate import train_device

GOAL = 1.0  # ours / open_clip's images per second, at least
# Where the two loops do different work for the same step (the JSON's "differences").
DIFFERENCES = [
    "augmentation: ours decodes each image in workers to uint8 at 8/7 of the input side "
    "(resize, centre crop), then random-resized-crops (scale 0.9-1) and flips the batch on "
    "the device; open_clip's workers random-resized-crop (scale 0.9-1, no flip) each PIL "
    "image straight to the input side, then convert to float and normalise",
    "host-to-device copy: ours uint8 at 8/7 of the input side, open_clip's float32 at it",
    "tokenisation: ours in the main process, a batch per step; open_clip's per caption, "
    "in the workers",
    "per step, ours also checks that the loss is finite (one host sync) and keeps logs",
    "loss: both the plain symmetric CLIP loss (ours with multi_positive=false)",
    "weight decay: ours also exempts the text tower's positional embedding",
    "lr: both a cosine from the peak without warm-up; ours ends at 0, open_clip's just above",
]

# its flags live in contrastkit.training.bench.flags, which `--help` imports without torch
add_arguments = flags.finetune


def settings_from_args(args: argparse.Namespace, device: torch.device) -> FinetuneSettings:
    """The run's settings: flags, else defaults for the device (or for --quick)."""
    gpu, q = device.type == "cuda", bool(args.quick)
    cores = len(os.sched_getaffinity(0))
    precision = args.precision if args.precision != "auto" else "bf16" if gpu else "fp32"
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"--precision {precision}: auto, bf16, fp16 or fp32")
    return FinetuneSettings(
        arch=pick_default(args.arch, "ViT-B-32", TINY, TINY, gpu, q),
        batch_size=pick_default(args.batch_size, 256, 32, 8, gpu, q),
        warmup=pick_default(args.warmup, 20, 3, 1, gpu, q),
        steps=pick_default(args.steps, 400, 20, 2, gpu, q),
        precision=precision,
        device=str(device),
        workers=pick_default(
            args.workers, min(15, max(1, cores - 1)), max(1, cores - 1), 1, gpu, q
        ),
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        threads=torch.get_num_threads(),
        rounds=pick_default(args.rounds, 1, 2, 1, gpu, q),
    )


def say(message: str) -> None:
    print(f"bench finetune: {message}", file=sys.stderr, flush=True)


def run_ours(s: FinetuneSettings, model_dir: Path, pairs: Path, scratch: Path) -> dict[str, Any]:
    """Fine-tune with our Trainer (its own fit loop) for s.total_steps steps -> images/s
    over the timed steps and the first and last step's loss."""
    from contrastkit.training.engine.trainer import Trainer
    from contrastkit.training.methods import get_method

    values: dict[str, Any] = {
        "method": "clip",
        "init_from": f"open_clip:local-dir:{model_dir}",
        "data": f"pairs:{pairs}",
        "batch_size": s.batch_size,
        "steps": s.total_steps,
        "device": s.device,
        "precision": s.precision,
        "seed": s.seed,
        "workers": s.workers,
        "optimizer": "adamw",
        "lr": s.lr,
        "weight_decay": s.weight_decay,
        "warmup_epochs": 0.0,  # as the peer's --warmup 0
        "holdout": 0.0,  # every row trains, as on the peer
        "before_after": False,
        "knn_every": 0,
        "save_every": 1_000_000,  # no checkpoint at an epoch end inside the timed span
        "tensorboard": False,
        "progress": False,
        "out": str(scratch),
        "multi_positive": False,  # open_clip's plain loss: one positive per row
        "min_crop_scale": 0.9,  # open_clip's training crop scale (0.9, 1)
    }
    cfg, params = build_config(values, get_method("clip").Params)
    trainer = Trainer(cfg, params)
    losses: list[float] = []
    clock = StepClock(trainer.device, s.warmup, s.steps, lambda: losses.append(trainer.last_loss))
    clock.attach(trainer.optimizer)
    trainer.fit()
    # the trainer (its loader's workers, the model) goes at the caller's gc.collect():
    # the clock's hook and the trainer refer to each other
    return {
        "loop": "contrastkit.training.engine.trainer.Trainer.fit",
        "data": "pairs: FileData (decode workers) + batched device augmentation",
        "precision": s.precision,
        "workers": s.workers,
        "peak_lr": trainer.peak_lr,
        **clock.result(s.batch_size),
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }


def _release(device: torch.device) -> None:
    """Free the side that just ran (its model, optimiser state, loader workers) so the
    next one starts with the device memory and the cores to itself."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def prepare_inputs(
    s: FinetuneSettings, args: argparse.Namespace, tmp: Path
) -> tuple[Path, Path, Path, dict[str, Any]]:
    """The model folder, our pairs file, the peer's (absolute paths) and what they hold."""
    say(f"writing {s.arch} with random weights (seed {s.seed}) in local-dir format")
    model = write_model(s.arch, tmp / "model", s.seed)
    if args.pairs:
        pairs = Path(args.pairs).expanduser()
    else:
        rows = s.total_steps * s.batch_size  # one pass: neither loop crosses an epoch end
        say(f"writing {rows} Fashion-MNIST pairs")
        pairs = write_pairs(tmp / "pairs", rows, args.fashion_mnist or FASHION_MNIST_DIR)
    peer_csv, rows = absolute_pairs(pairs, tmp / "peer.csv")
    source = args.fashion_mnist or FASHION_MNIST_DIR
    described = args.pairs or f"Fashion-MNIST PNGs ({source}), a temp folder"
    return tmp / "model", pairs, peer_csv, {"model": model, "pairs": described, "rows": rows}


def run_round(
    s: FinetuneSettings, r: int, inputs: tuple[Path, Path, Path], tmp: Path
) -> dict[str, Any]:
    """Round r: each side once, in s.order(r) -> {"ours": ..., "peer": ...}."""
    from contrastkit.training.bench.peer_openclip import run_peer

    model_dir, pairs, peer_csv = inputs
    out: dict[str, Any] = {}
    for side in s.order(r):
        steps = f"{s.warmup} + {s.steps} steps of batch {s.batch_size}"
        say(f"round {r + 1}/{s.rounds}, {side}: {steps}")
        if side == "ours":
            out[side] = run_ours(s, model_dir, pairs, tmp / f"run-{r}")
        else:
            out[side] = run_peer(s, model_dir, peer_csv)
        _release(torch.device(s.device))
        say(f"{side}: {out[side]['images_per_s']:.1f} img/s")
    return out


def measure(
    s: FinetuneSettings, args: argparse.Namespace, path: Path, result: dict[str, Any]
) -> dict[str, Any]:
    """s.rounds rounds of both sides on the same inputs; the JSON is written after each."""
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as name:
        tmp = Path(name)
        model_dir, pairs, peer_csv, result["inputs"] = prepare_inputs(s, args, tmp)
        result["rounds"] = []
        for r in range(s.rounds):
            result["rounds"].append(run_round(s, r, (model_dir, pairs, peer_csv), tmp))
            write_json(path, result)
    for side in ("ours", "peer"):
        result[side] = pooled([r[side] for r in result["rounds"]], s.batch_size)
    ratio = result["ours"]["images_per_s"] / result["peer"]["images_per_s"]
    goal = f"ours >= {GOAL:.1f}x open_clip's"
    return result | {"ratio": ratio, "goal": goal, "goal_met": ratio >= GOAL}


def print_report(result: dict[str, Any]) -> None:
    """The figures as a table, the ratio against the goal, and what fed open_clip."""
    s, ours, peer = result["settings"], result["ours"], result["peer"]
    sides = (("ours", ours), ("peer", peer))
    model = result["inputs"]["model"]
    print(
        f"Fine-tuning open_clip {s['arch']} (random weights, {model['parameters'] / 1e6:.1f}M "
        f"parameters, {model['image_size']} px): batch {s['batch_size']}, {s['precision']}, "
        f"{s['steps']} timed steps after {s['warmup']} (x {s['rounds']} rounds), "
        f"{s['workers']} data workers a side, on {result['device_name']} ({result['device']})"
    )
    last = s["warmup"] + s["steps"]
    rows = [
        [name, f"{r['images_per_s']:.1f}", f"{r['timed_seconds']:.2f}",
         f"{r['loss_first']:.4f}", f"{r['loss_last']:.4f}"]
        for name, r in (("ours (Trainer.fit)", ours), ("open_clip (train_one_epoch)", peer))
    ]  # fmt: skip
    cols = ["loop", "img/s", "timed s", "loss, step 1", f"loss, step {last}"]
    print(markdown_table(cols, rows))
    if s["rounds"] > 1:
        each = {k: ", ".join(f"{x:.1f}" for x in r["images_per_s_each"]) for k, r in sides}
        print(f"img/s of each round: ours {each['ours']}; open_clip {each['peer']}")
    verdict = "met" if result["goal_met"] else "NOT met"
    print(f"ours / open_clip: {result['ratio']:.2f}x (goal: {result['goal']}; {verdict})")
    print(f"open_clip's data: {peer['data']}")


def run(args: argparse.Namespace) -> int:
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        device = train_device(args.device)
        s = settings_from_args(args, device)
        env = environment(device)
        path = Path(args.json) if args.json else Path(args.out) / f"finetune-{timestamp(env)}.json"
        result: dict[str, Any] = {"benchmark": "finetune", **env, "settings": vars(s).copy()}
        result["settings"] |= {"peak_lr": s.peak_lr, "peer_precision": s.peer_precision}
        result |= {"order": [s.order(r) for r in range(s.rounds)], "differences": DIFFERENCES}
        say(f"{device} ({env['device_name']}); results -> {path}")
        result = measure(s, args, path, result)
        write_json(path, result)
    except (ConfigError, DataError, ValueError, ImportError) as e:
        print(f"contrastive bench finetune: {e}", file=sys.stderr)
        return 2
    print_report(result)
    print(f"wrote {path}")
    return 0 if all(math.isfinite(result[k]["loss_last"]) for k in ("ours", "peer")) else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m contrastkit.training.bench.finetune` (the same as `contrastive bench
    finetune`)."""
    parser = argparse.ArgumentParser(
        prog="python -m contrastkit.training.bench.finetune", description=__doc__
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
