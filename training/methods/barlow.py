"""Barlow Twins (Zbontar et al. 2021): make the cross-correlation of two views' embeddings
the identity.

    x -> view 1, view 2 -> backbone -> projector -> z1, z2 -> barlow_twins_loss(z1, z2)

No negatives, no momentum encoder, no stop-gradient: the on-diagonal term makes each
dimension invariant to the augmentations, the off-diagonal term (weight `lambd`)
decorrelates the dimensions, so the embedding cannot collapse to a constant. The
standardisation and the cross-correlation span the global batch under DDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from contrastkit.training.heads import ProjectionHead
from contrastkit.training.losses import barlow_twins_loss
from contrastkit.training.methods import register
from contrastkit.training.methods.base import (
    MethodContext,
    MethodParams,
    StepOutput,
    Views,
    solo_learn_sources,
)
from contrastkit.training.methods.twoview import TwoViewMethod

if TYPE_CHECKING:
    pass


@dataclass
class BarlowTwinsParams(MethodParams):
    """Barlow Twins' hyper-parameters (`--set key=value`); SOURCES says where each is from."""

    # The paper's projector is 3 layers of 8192 (its ablation: accuracy still rises with
    # the width on ImageNet). That is ~150 M parameters, more than ten ResNet-18s, and a
    # [8192, 8192] cross-correlation per step; on small data sets and single-GPU batches
    # 3 x 2048 (what solo-learn uses on CIFAR) keeps the head cheaper than the backbone.
    proj_hidden: int = 2048
    proj_dim: int = 2048
    proj_layers: int = 3
    # The paper's off-diagonal weight, ~1/D for its D = 8192. Kept for D = 2048: the
    # paper found the method insensitive to it within a factor of a few.
    lambd: float = 0.0051
    head_norm: str = "batch"

    SOURCES: ClassVar[dict[str, str]] = {
        "proj_hidden": "solo-learn CIFAR recipe (2048; paper: 8192, heavier than the backbone)",
        "proj_dim": "solo-learn CIFAR recipe (2048; paper: 8192)",
        "proj_layers": "paper: Zbontar et al. 2021 (Barlow Twins, 3-layer projector)",
        "lambd": "paper: Barlow Twins (0.0051 for D = 8192; kept for D = 2048)",
        "head_norm": "paper: Barlow Twins (BatchNorm in the projector's hidden layers)",
    }


@register
class BarlowTwins(TwoViewMethod[BarlowTwinsParams]):
    """Barlow Twins with a `proj_layers`-layer MLP projector (Linear, norm, ReLU blocks).

    Optimiser defaults: solo-learn's CIFAR recipe (scripts/pretrain/cifar/barlow.yaml):
    LARS (contrastkit.training.engine.optim: eta 0.02, LARC-clipped, biases and norms exempt), lr
    0.3 per 256 images, weight decay 1e-4. The paper uses LARS with lr 0.2 per 256 for the weights
    (0.0048 for biases and norms), weight decay 1.5e-6, batch 2048 and 1000 ImageNet epochs. LARS
    matters here: the loss is a sum over D^2 entries, so its raw gradient scale depends on the
    projector's width, and the trust ratio takes that scale out of the step.
    """

    name = "barlow"
    Params = BarlowTwinsParams
    default_optimizer, default_lr, default_weight_decay = "lars", 0.3, 1e-4
    DEFAULT_SOURCES = solo_learn_sources("barlow.yaml", "lars", 0.3, 1e-4)

    def __init__(
        self, backbone: nn.Module, feat_dim: int, params: BarlowTwinsParams, ctx: MethodContext
    ) -> None:
        super().__init__(backbone, feat_dim, params, ctx)
        if params.lambd <= 0:
            raise ValueError(f"lambd must be positive, got {params.lambd}")
        # The loss standardises every dimension over the batch, so a bias on the last layer
        # would get an identically zero gradient: none, as in the paper's code.
        dims = (params.proj_hidden, params.proj_dim, params.proj_layers, params.head_norm)
        self.projector = ProjectionHead(feat_dim, *dims, last_bias=False)

    def loss(self, views: Views) -> StepOutput:
        """Barlow Twins loss over the global batch; logs on_diag_mean, the mean C_ii.

        Each view is its own forward pass, so a BatchNorm projector normalises each view
        over its own batch, as in the reference implementation.
        """
        z1, z2 = self.project(views.crops[0]), self.project(views.crops[1])
        loss = barlow_twins_loss(z1, z2, self.params.lambd)
        with torch.no_grad():
            # The mean per-dimension correlation of this rank's two views: 1 when every
            # dimension is invariant. Local only (a log, not worth a collective).
            a, b = z1.detach().float(), z2.detach().float()
            a = (a - a.mean(0)) / (a.std(0, unbiased=False) + 1e-5)
            b = (b - b.mean(0)) / (b.std(0, unbiased=False) + 1e-5)
            on_diag = (a * b).mean(0).mean()
        return StepOutput(loss=loss, logs={"on_diag_mean": on_diag})
