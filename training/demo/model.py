"""A run's model before and after training, rebuilt from its checkpoint.

"Before" is the run's own initial weights: the Trainer seeds every generator with the
run's seed right before it builds the backbone and method, so seeding the same way and
building the same architecture reproduces them exactly (the demo test checks this).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from contrastkit.training.augment import Augmenter
from contrastkit.training.config import TrainConfig, build_config
from contrastkit.training.data.size import CIFAR_STEM_MAX, image_size_of
from contrastkit.training.encoders.nets.backbones import BackboneSpec, build_backbone
from contrastkit.training.engine.checkpoint import Checkpoint
from contrastkit.training.engine.runstate import seed_all
from contrastkit.training.evaluate.knn import embed
from contrastkit.training.methods import MethodContext, get_method


def run_config(checkpoint: Checkpoint) -> tuple[TrainConfig, Any]:
    """A checkpoint's (TrainConfig, method Params)."""
    cls = get_method(checkpoint.method)
    return build_config(dict(checkpoint.config), cls.Params)


def backbone_spec(cfg: TrainConfig) -> BackboneSpec:
    """The BackboneSpec the Trainer builds for `cfg` (a CIFAR stem only for ResNets on
    small images unless set)."""
    size = image_size_of(cfg)
    cifar = cfg.cifar_stem if cfg.cifar_stem is not None else size <= CIFAR_STEM_MAX
    return BackboneSpec(cfg.backbone, cifar and "resnet" in cfg.backbone, size)


def build_method(cfg: TrainConfig, params: Any, spec: BackboneSpec) -> Any:
    """The run's Method on the CPU in eval mode, with the initial weights the Trainer
    gives it (seeded the same way right before building)."""
    seed_all(cfg.seed)
    backbone, feat_dim = build_backbone(spec)
    ctx = MethodContext(
        device=torch.device("cpu"), image_size=image_size_of(cfg), total_steps=1,
        steps_per_epoch=1, global_batch=cfg.batch_size,
    )  # fmt: skip
    return get_method(cfg.method)(backbone, feat_dim, params, ctx).eval()


def rebuild(checkpoint: Checkpoint, *, trained: bool) -> Any:
    """A checkpoint's Method (CPU, eval mode): its trained weights, or (trained=False)
    the initial weights the run started from."""
    cfg, params = run_config(checkpoint)
    method = build_method(cfg, params, checkpoint.backbone or backbone_spec(cfg))
    if trained:
        method.load_state_dict(checkpoint.model)
    return method.eval()


@torch.no_grad()
def features(method: Any, images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> backbone features float32 [N, feat_dim] (what kNN and export
    use), from the deterministic eval view, on the CPU."""
    augment = Augmenter("cpu")
    method.eval()
    return embed(lambda u8: method.image_features(augment.eval_view(u8, size)), images,
                 torch.device("cpu"))  # fmt: skip


@torch.no_grad()
def projections(method: Any, views: torch.Tensor) -> torch.Tensor:
    """Normalised views float [2B, 3, s, s] -> unit projections float32 [2B, proj_dim].

    Computed in train mode, i.e. with batch statistics in the projector's BatchNorm,
    which is how the loss sees them during training (the method is then set back to eval).
    """
    method.train()
    try:
        z = method.project(views).float()
    finally:
        method.eval()
    return F.normalize(z, dim=1)


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """Features [N, d] -> cosine similarities [N, N]."""
    x = F.normalize(x.float(), dim=1)
    return x @ x.T
