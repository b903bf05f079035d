"""SimCLR (Chen et al. 2020): two augmented views, a projection MLP, NT-Xent.

    x -> view 1, view 2 -> backbone -> projector -> z1, z2 -> nt_xent(z1, z2, T)

Under DDP the loss takes its negatives from every rank (contrastkit.training.losses.nt_xent
gathers the projections with gradients), so the global batch is one softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.training.augment import simclr_view
from contrastkit.training.heads import ProjectionHead
from contrastkit.training.losses import nt_xent
from contrastkit.training.methods import register
from contrastkit.training.methods.base import (
    Method,
    MethodContext,
    MethodParams,
    StepOutput,
    Views,
    solo_learn_sources,
)

if TYPE_CHECKING:
    from contrastkit.training.augment import Augmenter
    from contrastkit.training.data import Batch


@dataclass
class SimCLRParams(MethodParams):
    """SimCLR's hyper-parameters (`--set key=value`); SOURCES says where each is from."""

    # 0.5 rather than ImageNet's 0.1: with the batches of short single-GPU runs (256-1024)
    # the softer softmax keeps gradient from all negatives instead of the few hardest,
    # which SimCLR's own CIFAR-10 study (appendix B.9) found best; lower it with large
    # batches and long schedules.
    temperature: float = 0.5
    proj_hidden: int = 2048
    proj_dim: int = 128
    proj_layers: int = 2
    head_norm: str = "batch"

    SOURCES: ClassVar[dict[str, str]] = {
        "temperature": "paper: SimCLR appendix B.9, CIFAR-10 (0.5; ImageNet: 0.1)",
        "proj_hidden": "paper: Chen et al. 2020 (SimCLR), hidden layer of 2048",
        "proj_dim": "paper: SimCLR (128-d output)",
        "proj_layers": "paper: SimCLR v1 (2-layer MLP head)",
        "head_norm": "SimCLR's code (BatchNorm in the projection head)",
    }


@register
class SimCLR(Method[SimCLRParams]):
    """SimCLR with a `proj_layers`-layer projection head over the backbone features.

    Optimiser defaults: solo-learn's CIFAR recipe (scripts/pretrain/cifar/simclr.yaml):
    LARS (contrastkit.training.engine.optim: eta 0.02, LARC-clipped, biases and norms exempt), lr
    0.4 per 256 images, weight decay 1e-4. The trust ratio normalises each layer's step by its
    gradient norm, so the learning rate does not have to be retuned when the temperature (which
    scales the gradient by 1/T) changes. The paper's own recipe is unclipped LARS with eta 0.001, lr
    0.3 per 256 and weight decay 1e-6 (`--set lars_eta=0.001 --set lars_clip=false --lr 0.3 --set
    weight_decay=1e-6`; `lr_scaling=sqrt` with lr 1.2 for its small-batch rule 0.075 * sqrt(batch)).
    With `optimizer=sgd`, use an lr near 0.1 per 256 and weight_decay 5e-4.
    """

    name = "simclr"
    Params = SimCLRParams
    default_optimizer, default_lr, default_weight_decay = "lars", 0.4, 1e-4
    DEFAULT_SOURCES = solo_learn_sources("simclr.yaml", "lars", 0.4, 1e-4)

    projector: ProjectionHead

    def __init__(
        self, backbone: nn.Module, feat_dim: int, params: SimCLRParams, ctx: MethodContext
    ) -> None:
        super().__init__(backbone, feat_dim, params, ctx)
        if params.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {params.temperature}")
        self.projector = ProjectionHead(
            feat_dim, params.proj_hidden, params.proj_dim, params.proj_layers, params.head_norm
        )

    def make_views(self, batch: Batch, augment: Augmenter) -> Views:
        """uint8 [B, C, H, W] -> two independent views, float [B, 3, size, size] each."""
        spec = simclr_view(self.ctx.image_size)
        return Views(crops=[augment(batch.images, spec), augment(batch.images, spec)])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, h, w] -> projections [N, proj_dim] (not normalised)."""
        out: torch.Tensor = self.projector(self.backbone(x))
        return out

    def loss(self, views: Views) -> StepOutput:
        """NT-Xent between the projections of the two global views; logs pos_sim.

        Both views go through the backbone as one batch of 2B, as in the reference
        implementation: one forward instead of two, and BatchNorm statistics over 2B.
        """
        x1, x2 = views.crops[0], views.crops[1]
        z1, z2 = self.project(torch.cat([x1, x2])).chunk(2)
        loss = nt_xent(z1, z2, self.params.temperature)
        pos = F.cosine_similarity(z1.detach().float(), z2.detach().float(), dim=1).mean()
        return StepOutput(loss=loss, logs={"pos_sim": pos})
