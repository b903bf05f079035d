"""The peer of `contrastive bench quality --quick`: one method trained with lightly.

Run in the peer's own environment (scripts/peer-lightly-env.sh makes it), with this
checkout importable (contrastkit.training.bench.checkout_path: a folder of two symlinks, DIR
below); the quality bench starts it as a subprocess:

    PYTHONPATH=DIR /tmp/lightlyenv/bin/python -m contrastkit.training.bench.peer_lightly \\
        --method simclr --epochs 3 --out peer-simclr.json

The recipe is OURS, read from our resolved config (contrastkit.training.config.build_config and the
method's defaults), never restated here: optimiser, lr per 256 scaled to the batch,
weight decay, momentum, LARS eta and clipping, warm-up epochs and cosine to
min_lr_ratio, the method's Params, the views our method draws (peer_lightly_methods).
The backbone is ours (the same `tiny` architecture, seeded alike) and so is the kNN
(the same measurement: eval view, k = 200, t = 0.1, all train images against all test
images). Everything else is lightly's: losses, heads, momentum helpers, transforms (on
PIL images in DataLoader workers), LARS without clipping and the warm-up/cosine schedule.
lightly's LARS has no LARC clipping, which our default LARS uses: LARC below implements
it from NVIDIA apex's formula.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_warmup_schedule
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from contrastkit.training.augment import Augmenter
from contrastkit.training.bench.peer_lightly_methods import (
    PEERS,
    PeerMethod,
    lightly_transform,
    our_view_specs,
)
from contrastkit.training.bench.time_to_knn import KNN_K, KNN_T
from contrastkit.training.config import build_config, parse_overrides
from contrastkit.training.data import LabelledArrays, load_knn_data
from contrastkit.training.encoders.nets.backbones import BackboneSpec, build_backbone
from contrastkit.training.evaluate.knn import embed, knn_accuracy
from contrastkit.training.methods import get_method
from contrastkit.training.methods.base import MethodContext


class LARC(torch.optim.SGD):
    """SGD with momentum after NVIDIA apex's LARC (what our `lars_clip` means): per
    tensor of a group with lars=True, with w its weight and g its gradient,
        rate = eta * |w| / (|g| + wd * |w| + eps);  rate = min(rate / lr, 1)
        g <- (g + wd * w) * rate
    and then the plain SGD step (weight decay already applied)."""

    def __init__(self, groups: list[dict[str, Any]], lr: float, momentum: float, eta: float):
        super().__init__(groups, lr=lr, momentum=momentum)
        self.eta, self.eps = eta, 1e-8

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        for group in self.param_groups:
            wd, lr = group.pop("larc_wd", group["weight_decay"]), group["lr"]
            group["larc_wd"], group["weight_decay"] = wd, 0.0
            for p in group["params"]:
                if p.grad is None or not group.get("lars", False):
                    continue
                w_norm, g_norm = p.norm(), p.grad.norm()
                if w_norm > 0 and g_norm > 0 and lr > 0:
                    rate = self.eta * w_norm / (g_norm + wd * w_norm + self.eps)
                    p.grad.add_(p, alpha=wd).mul_(torch.clamp(rate / lr, max=1.0))
        return super().step(closure)


def resolve(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """Our config for the run -> (TrainConfig, Params, the resolved optimiser recipe)."""
    values: dict[str, Any] = {
        "method": args.method, "data": args.data, "backbone": args.backbone,
        "image_size": args.image_size, "batch_size": args.batch_size, "epochs": args.epochs,
        "seed": args.seed,
    }  # fmt: skip
    values |= parse_overrides(args.set or [])
    cls = get_method(args.method)
    cfg, params = build_config(values, cls.Params)
    recipe = {
        "optimizer": cfg.optimizer or cls.default_optimizer,
        "base_lr": cfg.lr if cfg.lr is not None else cls.default_lr,
        "weight_decay": cfg.weight_decay if cfg.weight_decay is not None
        else cls.default_weight_decay,
        "momentum": cfg.momentum, "lars_eta": cfg.lars_eta, "lars_clip": cfg.lars_clip,
        "lr_scaling": cfg.lr_scaling, "warmup_epochs": cfg.warmup_epochs,
        "min_lr_ratio": cfg.min_lr_ratio,
    }  # fmt: skip
    return cfg, params, recipe


def peak_lr(recipe: dict[str, Any], batch: int) -> float:
    scale = batch / 256 if recipe["lr_scaling"] == "linear" else (batch / 256) ** 0.5
    return float(recipe["base_lr"] * scale)


def build_optimizer(model: nn.Module, recipe: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    """lightly's split (norm layers and biases: no weight decay, no LARS rate), then SGD,
    AdamW, lightly's LARS (no clipping) or LARC (clipping) with our recipe's values."""
    decay, exempt = get_weight_decay_parameters([model])
    decay = [p for p in decay if p.requires_grad]
    exempt = [p for p in exempt if p.requires_grad]
    wd, name, momentum = recipe["weight_decay"], recipe["optimizer"], recipe["momentum"]
    groups = [
        {"params": decay, "weight_decay": wd, "lars": True},
        {"params": exempt, "weight_decay": 0.0, "lars": False},
    ]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    if recipe["lars_clip"]:
        return LARC(groups, lr=lr, momentum=momentum, eta=recipe["lars_eta"])
    return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=recipe["lars_eta"])


class PILViews(Dataset[list[Tensor]]):
    """uint8 [N, C, H, W] -> per index, the transform's views of the RGB PIL image."""

    def __init__(self, images: Tensor, transform: Any) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> list[Tensor]:
        img = self.images[i]
        pil = Image.fromarray(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy())
        return self.transform(pil.convert("RGB"))  # type: ignore[no-any-return]


def backbone_knn(
    backbone: nn.Module, data: tuple[LabelledArrays, LabelledArrays], size: int
) -> float:
    """Our kNN measurement (OnlineKNN's): eval view, backbone features, k=200, t=0.1."""
    bank, queries = data
    device = next(backbone.parameters()).device
    augment = Augmenter(device)

    def features(u8: Tensor) -> Tensor:
        return backbone(augment.eval_view(u8, size)).float()  # type: ignore[no-any-return]

    backbone.eval()
    with torch.no_grad():
        bank_f = embed(features, bank.images, device)
        query_f = embed(features, queries.images, device)
    return knn_accuracy(
        bank_f, bank.labels.to(device), query_f, queries.labels, len(bank.classes), KNN_K, KNN_T
    )


def train(
    model: PeerMethod, loader: DataLoader[list[Tensor]], opt: torch.optim.Optimizer,
    schedule: dict[str, Any], say: Any,
) -> list[float]:  # fmt: skip
    """The loop: lr, forward, backward, before_step, step, after_step -> losses [steps]."""
    total, spe = schedule["total"], schedule["steps_per_epoch"]
    losses: list[float] = []
    step, epoch = 0, 0
    model.train()
    while step < total:
        for views in loader:
            lr = cosine_warmup_schedule(
                step, total, schedule["peak"], schedule["peak"] * schedule["min_ratio"],
                schedule["warmup"], 0.0,
            )  # fmt: skip
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = model.loss(views, step, epoch)
            loss.backward()
            model.before_step(step, epoch)
            opt.step()
            model.after_step(step, total)
            losses.append(float(loss.detach()))
            step += 1
            if step % 20 == 0:
                say(f"step {step}/{total}: loss {losses[-1]:.4f}, lr {lr:.4g}")
            if step >= total:
                break
        epoch = step // spe
    return losses


def run(args: argparse.Namespace) -> dict[str, Any]:
    import lightly

    say = lambda m: print(f"peer lightly {args.method}: {m}", file=sys.stderr, flush=True)  # noqa: E731
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, params, recipe = resolve(args)
    data = load_knn_data(cfg.data, image_size=cfg.image_size)
    assert data is not None, f"{cfg.data} has no labels"
    bank = data[0]
    spe = bank.images.shape[0] // cfg.batch_size
    total = min(args.steps or cfg.epochs * spe, cfg.epochs * spe)
    warmup = min(round(recipe["warmup_epochs"] * spe), total // 2)
    ctx = MethodContext(torch.device("cpu"), cfg.image_size, total, spe, cfg.batch_size,
                        classes=bank.classes, channels=int(bank.images.shape[1]))  # fmt: skip
    torch.manual_seed(cfg.seed)
    # the Trainer's rule: a CIFAR stem for ResNets at small sizes unless set
    cifar = cfg.cifar_stem if cfg.cifar_stem is not None else cfg.image_size <= 64
    spec = BackboneSpec(cfg.backbone, cifar and "resnet" in cfg.backbone, cfg.image_size)
    backbone, feat = build_backbone(spec)
    model = PEERS[args.method](backbone, feat, params, ctx)
    specs = our_view_specs(args.method, params, ctx)
    loader = DataLoader(
        PILViews(bank.images, lightly_transform(specs)), batch_size=cfg.batch_size,
        shuffle=True, drop_last=True, num_workers=args.workers,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    peak = peak_lr(recipe, cfg.batch_size)
    opt = build_optimizer(model, recipe, peak)
    schedule = {"total": total, "steps_per_epoch": spe, "peak": peak,
                "min_ratio": recipe["min_lr_ratio"], "warmup": warmup}  # fmt: skip
    say(f"{total} steps ({spe} an epoch), {recipe}")
    t0 = time.perf_counter()
    losses = train(model, loader, opt, schedule, say)
    train_s = time.perf_counter() - t0
    top1 = backbone_knn(backbone, data, cfg.image_size)
    say(f"kNN top-1 {top1:.4f} ({train_s:.0f} s training)")
    return {
        "method": args.method, "lightly": lightly.__version__, "recipe": recipe,
        "views": [repr(s) for s in specs], "steps": len(losses), "steps_per_epoch": spe,
        "losses": losses, "knn_top1": top1, "queries": int(data[1].images.shape[0]),
        "train_seconds": train_s, "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m contrastkit.training.bench.peer_lightly", description=__doc__
    )
    p.add_argument("--method", required=True, choices=sorted(PEERS))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="stop after this many (a smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers [1]")
    p.add_argument("--threads", type=int, default=None, help="torch threads [torch's]")
    p.add_argument("--set", action="append", help="key=value, as `contrastive train --set`")
    p.add_argument("--out", required=True, help="the result JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = run(args)
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
