"""The peer of `contrastive bench finetune`: open_clip's own training loop.

open_clip_train.train.train_one_epoch, with its arguments from open_clip_train's own
parser (parse_args), the model and training transform from
open_clip.create_model_and_transforms (the same local-dir model as ours), the loss from
open_clip.create_loss, AdamW with open_clip_train's parameter groups (gains, biases and
logit_scale without weight decay) and open_clip_train.scheduler.cosine_lr.

Data: open_clip_train.data.get_data (its CsvDataset: PIL open, the training transform
and tokenisation per item in DataLoader workers). That module imports pandas, webdataset
and braceexpand for all its loaders; where one is missing, CsvPairs stands in, doing
the same per-item work, and the result says so ("data").
"""

from __future__ import annotations

import argparse
import csv
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from contrastkit.training.bench.finetune_setup import FinetuneSettings, StepClock
from contrastkit.training.data import DataError

GET_DATA = "open_clip_train.data.get_data (CsvDataset)"


def peer_args(s: FinetuneSettings, model_dir: Path, csv_file: Path) -> argparse.Namespace:
    """open_clip_train's arguments for this run, through its own parser; the fields its
    main() sets after parsing (device, ranks, logging targets) are set as it does alone."""
    from open_clip_train.params import parse_args

    flags = {
        "--model": f"local-dir:{model_dir}",
        "--train-data": str(csv_file),
        "--dataset-type": "csv",
        "--csv-img-key": "path",
        "--csv-caption-key": "caption",
        "--csv-separator": ",",
        "--batch-size": s.batch_size,
        "--precision": s.peer_precision,
        "--workers": s.workers,
        "--lr": s.peak_lr,
        "--wd": s.weight_decay,
        # our AdamW's betas and eps (open_clip picks these only for names containing "vit")
        "--beta1": 0.9,
        "--beta2": 0.98,
        "--eps": 1e-6,
        "--warmup": 0,  # as ours: no lr warm-up, a cosine over the run's steps
        "--epochs": 1,
        "--seed": s.seed,
        "--device": s.device,
    }
    args = parse_args([str(x) for kv in flags.items() for x in kv])
    args.rank, args.local_rank, args.world_size, args.distributed = 0, 0, 1, False
    args.wandb, args.tensorboard, args.distill = False, False, False
    return args


class CsvPairs(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Stand-in for open_clip_train's CsvDataset where its module cannot be imported:
    a path,caption CSV; per item, PIL opens the path as written, the training transform
    runs, and the caption is tokenised."""

    def __init__(self, file: Path, transform: Callable[[Any], torch.Tensor], tokenizer: Any):
        with open(file, newline="") as f:
            rows = list(csv.DictReader(f))
        self.paths = [r["path"] for r in rows]
        self.captions = [r["caption"] for r in rows]
        self.transform, self.tokenizer = transform, tokenizer

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        image = self.transform(Image.open(self.paths[i]))
        return image, self.tokenizer([self.captions[i]])[0]


def train_loader(
    args: argparse.Namespace, transform: Callable[[Any], torch.Tensor], tokenizer: Any
) -> tuple[DataLoader[Any], str]:
    """open_clip_train's training DataLoader -> (loader, what built it)."""
    try:
        from open_clip_train.data import get_data
    except ImportError as e:  # pandas, webdataset or braceexpand missing
        dataset = CsvPairs(Path(args.train_data), transform, tokenizer)
        loader = DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            pin_memory=torch.device(args.device).type == "cuda",
            drop_last=True,
        )  # get_csv_dataset's settings (it pins always; pinning needs a GPU)
        return loader, f"stand-in for CsvDataset (open_clip_train.data: {e})"
    data = get_data(args, (transform, transform), epoch=0, tokenizer=tokenizer)
    return data["train"].dataloader, GET_DATA


class Feed:
    """open_clip_train's DataInfo for train_one_epoch: exactly `steps` batches of `loader`
    (another pass of it when one runs out, as a next epoch would)."""

    def __init__(self, loader: DataLoader[Any], steps: int, batch_size: int) -> None:
        self.loader, self.num_batches, self.num_samples = loader, steps, steps * batch_size

    @property
    def dataloader(self) -> Feed:
        return self

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: one process, and the loader's sampler reshuffles every pass."""

    def __iter__(self) -> Iterator[Any]:
        given = 0
        while given < self.num_batches:
            before = given
            for batch in self.loader:
                yield batch
                given += 1
                if given == self.num_batches:
                    return
            if given == before:
                raise DataError("open_clip's loader yields no batch: fewer rows than a batch")


class LossRecorder:
    """open_clip's loss, keeping each step's total (detached; read once at the end)."""

    def __init__(self, loss: nn.Module) -> None:
        self.loss = loss
        self.totals: list[torch.Tensor] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.loss(*args, **kwargs)
        total: torch.Tensor = (
            torch.stack(list(out.values())).sum() if isinstance(out, dict) else out
        )
        self.totals.append(total.detach())
        return out

    def values(self) -> list[float]:
        return torch.stack(self.totals).float().tolist() if self.totals else []


def adamw(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW as open_clip_train builds it by default: parameters with fewer than two
    dimensions, and names with bn, ln, bias or logit_scale, are not weight-decayed."""
    exempt: list[nn.Parameter] = []
    decayed: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        flat = p.ndim < 2 or any(k in name for k in ("bn", "ln", "bias", "logit_scale"))
        (exempt if flat else decayed).append(p)
    groups = [{"params": exempt, "weight_decay": 0.0}, {"params": decayed, "weight_decay": args.wd}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)


def _seed(seed: int) -> None:
    """What open_clip_train's main seeds before it builds the data: torch, numpy, random."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def run_peer(s: FinetuneSettings, model_dir: Path, csv_file: Path) -> dict[str, Any]:
    """Fine-tune the model in `model_dir` on `csv_file` (absolute paths) with open_clip's
    loop for s.total_steps steps -> images/s over the timed steps, losses, what ran."""
    import open_clip
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    args = peer_args(s, model_dir, csv_file)
    device = torch.device(args.device)
    _seed(s.seed)
    model, transform, _ = open_clip.create_model_and_transforms(
        args.model, precision=args.precision, device=device, output_dict=True
    )
    tokenizer = open_clip.get_tokenizer(args.model)
    loader, source = train_loader(args, transform, tokenizer)
    optimizer = adamw(model, args)
    scaler = torch.amp.GradScaler(device.type) if args.precision == "amp" else None
    scheduler = cosine_lr(optimizer, args.lr, args.warmup, s.total_steps)
    loss = LossRecorder(open_clip.create_loss(args))
    clock = StepClock(device, s.warmup, s.steps)
    clock.attach(optimizer)
    feed = Feed(loader, s.total_steps, s.batch_size)
    train_one_epoch(model, {"train": feed}, loss, 0, optimizer, scaler, scheduler, None, args)
    losses = loss.values()
    return {
        "loop": "open_clip_train.train.train_one_epoch",
        "data": source,
        "precision": args.precision,
        "workers": args.workers,
        **clock.result(s.batch_size),
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }
