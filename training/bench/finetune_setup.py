"""What both sides of `contrastive bench finetune` share: settings, inputs, the step clock.

- FinetuneSettings: the one model, data, batch, precision, lr and step counts both use;
- write_model: an open_clip model with random weights (fixed seed), saved in open_clip's
  local-dir format (open_clip_config.json + open_clip_model.safetensors), so both sides
  load the same weights and nothing is downloaded;
- write_pairs: a pairs CSV (path,caption; paths relative to the file) of Fashion-MNIST
  PNGs; absolute_pairs: the same usable rows with absolute paths, for open_clip's
  CsvDataset, which opens a path as written (relative to the working directory);
- StepClock: times a loop by its optimiser steps, the same way for both sides.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from contrastkit.training.bench.flags import TINY
from contrastkit.training.data.files import scan_pairs
from contrastkit.training.data.idx import FASHION_CLASSES, load_idx_split

# The tutorial's small ViT CLIP (docs/finetune-clip.md): 32 px, 4+4 layers of width 128.
TINY_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 128, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
# Distinct images written; rows past it reuse them. Decoding costs the same per row
# either way, and writing all 60k PNGs would take ~10-20 s of a short device session.
MAX_IMAGES = 10_000
PEER_PRECISION = {"bf16": "amp_bf16", "fp16": "amp", "fp32": "fp32"}  # open_clip's names


@dataclass
class FinetuneSettings:
    """What both sides run with (the JSON's "settings")."""

    arch: str
    batch_size: int
    warmup: int  # untimed optimiser steps first
    steps: int  # timed optimiser steps after them
    precision: str  # bf16 | fp16 | fp32 (ours); PEER_PRECISION maps it to open_clip's
    device: str
    workers: int  # data-loading worker processes, each side
    lr: float  # per 256 images; both use peak_lr
    weight_decay: float
    seed: int = 0
    threads: int = 0  # torch intra-op threads (recorded)
    rounds: int = 1  # runs of each side, in the order ours, peer, peer, ours, ...

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def peak_lr(self) -> float:
        """Our linear rule (lr per 256 images), given to open_clip as its absolute --lr."""
        return self.lr * self.batch_size / 256

    @property
    def peer_precision(self) -> str:
        return PEER_PRECISION[self.precision]

    def order(self, round_index: int) -> tuple[str, str]:
        """Which side runs first in a round: alternating (ABBA), so a drift of a shared
        machine's speed over the run weighs on both sides alike."""
        return ("ours", "peer") if round_index % 2 == 0 else ("peer", "ours")


def pooled(runs: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """One side's runs -> images/s over all their timed steps together (images / seconds,
    so a slow round weighs by its length), and the first run's losses."""
    steps = sum(r["timed_steps"] for r in runs)
    seconds = sum(r["timed_seconds"] for r in runs)
    first = runs[0]
    return {
        **{k: v for k, v in first.items() if k not in ("images_per_s", "timed_seconds")},
        "images_per_s": steps * batch_size / seconds,
        "timed_seconds": seconds,
        "timed_steps": steps,
        "runs": len(runs),
        "images_per_s_each": [r["images_per_s"] for r in runs],
    }


def model_config(arch: str) -> dict[str, Any]:
    """open_clip's model_cfg for `arch` (TINY: the tutorial's), ValueError if unknown."""
    import open_clip

    if arch == TINY:
        return json.loads(json.dumps(TINY_CFG))  # a deep copy
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    return dict(cfg)


def write_model(arch: str, folder: Path, seed: int) -> dict[str, Any]:
    """Save `arch` with random weights (torch seed `seed`) in local-dir format in `folder`
    -> {"arch", "parameters", "image_size"}."""
    import open_clip
    from safetensors.torch import save_file

    cfg = model_config(arch)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg) if arch == TINY else open_clip.create_model(arch)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return {
        "arch": arch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": int(cfg["vision_cfg"]["image_size"]),
    }


def write_pairs(folder: Path, rows: int, source: str | Path) -> Path:
    """`rows` Fashion-MNIST image-caption pairs (PNGs + captions.csv with paths relative
    to it; at most MAX_IMAGES distinct images, cycled) -> the CSV's path."""
    from PIL import Image

    train = load_idx_split(source, "train", FASHION_CLASSES)
    n = min(rows, MAX_IMAGES, len(train.labels))
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.fromarray(train.images[i, 0].numpy())
        image.save(folder / "images" / f"{i:05d}.png", compress_level=1)
    file = folder / "captions.csv"
    with open(file, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption"])
        for r in range(rows):
            label = FASHION_CLASSES[int(train.labels[r % n])].lower()
            w.writerow([f"images/{r % n:05d}.png", f"a photo of a {label}"])
    return file


def absolute_pairs(pairs: Path, out: Path) -> tuple[Path, int]:
    """The usable rows of `pairs` (as our loader reads them) with absolute paths, as
    path,caption CSV at `out` -> (out, rows)."""
    scan = scan_pairs(pairs)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption"])
        for path, caption in zip(scan.paths, scan.captions, strict=True):
            w.writerow([str(Path(path).resolve()), caption])
    return out, len(scan.paths)


class StepClock:
    """Times a training loop by its optimiser steps (a post-step hook on the optimiser).

    It stamps the end of step `warmup` and of step `warmup + timed`, synchronising the
    device at those two stamps only: a sync every step would stall a loop that queues
    work ahead of the device. The timed span thus holds all of steps warmup+1 ..
    warmup+timed: fetching each batch, augmenting, tokenising, forward, backward, the
    optimiser, and the loop's own bookkeeping. `on_step` runs after every step.
    """

    def __init__(
        self,
        device: torch.device,
        warmup: int,
        timed: int,
        on_step: Callable[[], None] | None = None,
    ) -> None:
        if warmup < 1 or timed < 1:
            raise ValueError("the clock needs at least one warm-up and one timed step")
        self.device, self.warmup, self.timed, self.on_step = device, warmup, timed, on_step
        self.steps = 0
        self.stamps: list[float] = []

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_step_post_hook(self._hook)

    def _hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.steps += 1
        if self.on_step is not None:
            self.on_step()
        if self.steps in (self.warmup, self.warmup + self.timed):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stamps.append(time.perf_counter())

    def result(self, batch_size: int) -> dict[str, Any]:
        """{images_per_s, timed_seconds, timed_steps, warmup_steps}; RuntimeError when the
        loop took fewer optimiser steps than warmup + timed (e.g. fp16 overflow skips)."""
        if len(self.stamps) != 2:
            raise RuntimeError(
                f"the loop took {self.steps} optimiser steps, not {self.warmup + self.timed}"
            )
        seconds = self.stamps[1] - self.stamps[0]
        return {
            "images_per_s": self.timed * batch_size / seconds,
            "timed_seconds": seconds,
            "timed_steps": self.timed,
            "warmup_steps": self.warmup,
        }
