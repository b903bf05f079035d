"""SimSiam (Chen & He 2021): predict one view's projection from the other's, with a
stop-gradient and no momentum encoder.

    view -> backbone -> projector -> z -> predictor -> p
    loss = simsiam_loss(p1, sg(z2)) / 2 + simsiam_loss(p2, sg(z1)) / 2     (in [-1, 1])

BYOL without the EMA target: the paper shows the stop-gradient alone (with the
predictor) prevents collapse. Per sample, so DDP needs nothing across ranks.

Views: the paper's (and its code's), MoCo v2's augmentation on both views alike
(contrastkit.training.augment.simsiam_view: crop 0.2-1, jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale
0.2, blur p 0.5 from 64 px, no solarize). `views=byol` gives BYOL's asymmetric pair, what
this project used before `views` existed (checkpoints from then resume with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.training.augment import byol_views, simsiam_view
from contrastkit.training.heads import ProjectionHead
from contrastkit.training.losses import simsiam_loss
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
    from contrastkit.training.augment import ViewSpec

VIEW_RECIPES = ("simsiam", "byol")


@dataclass
class SimSiamParams(MethodParams):
    """SimSiam's hyper-parameters (`--set key=value`); SOURCES says where each is from."""

    # The paper's sizes: a 3-layer 2048-wide projector whose output also has a BatchNorm
    # (without affine here), and a bottleneck predictor 2048 -> 512 -> 2048 (its ablation:
    # the bottleneck helps). They are small next to the backbone, so we keep them.
    proj_hidden: int = 2048
    proj_dim: int = 2048
    proj_layers: int = 3
    pred_hidden: int = 512
    head_norm: str = "batch"
    views: str = "simsiam"  # simsiam (the paper's, symmetric) | byol (asymmetric)

    SOURCES: ClassVar[dict[str, str]] = {
        "proj_hidden": "paper: Chen & He 2021 (SimSiam), 2048-d projector",
        "proj_dim": "paper: SimSiam (2048-d output)",
        "proj_layers": "paper: SimSiam (3-layer projector, BN on its output too)",
        "pred_hidden": "paper: SimSiam (bottleneck predictor 2048-512-2048)",
        "head_norm": "paper: SimSiam (BatchNorm in the projector and predictor)",
        "views": "paper: SimSiam (MoCo v2's augmentation on both views, no solarize)",
    }


@register
class SimSiam(TwoViewMethod[SimSiamParams]):
    """SimSiam with an MLP projector (last layer normalised) and a bottleneck predictor.

    Optimiser defaults: solo-learn's CIFAR recipe (scripts/pretrain/cifar/simsiam.yaml):
    SGD (momentum 0.9), lr 0.5 per 256 images, weight decay 1e-5. The paper's ImageNet
    values are lr 0.05 per 256 with weight decay 1e-4 (batch 512); its CIFAR recipe is lr
    0.03 per 256 with weight decay 5e-4. The paper stresses that SimSiam
    does not need LARS or large batches; it also keeps the predictor's lr constant,
    which we do not (one schedule for all parameters).
    """

    name = "simsiam"
    Params = SimSiamParams
    default_optimizer, default_lr, default_weight_decay = "sgd", 0.5, 1e-5
    DEFAULT_SOURCES = solo_learn_sources("simsiam.yaml", "sgd", 0.5, 1e-5)

    def __init__(
        self, backbone: nn.Module, feat_dim: int, params: SimSiamParams, ctx: MethodContext
    ) -> None:
        if params.views not in VIEW_RECIPES:
            raise ValueError(f"simsiam: views must be one of {', '.join(VIEW_RECIPES)}")
        super().__init__(backbone, feat_dim, params, ctx)
        norm = params.head_norm
        dims = (params.proj_hidden, params.proj_dim, params.proj_layers)
        # The output BatchNorm removes any shift, so the last Linear's bias would get a
        # zero gradient; the paper's code freezes it, we leave it out.
        self.projector = ProjectionHead(
            feat_dim, *dims, norm, last_norm=True, last_bias=norm != "batch"
        )
        self.predictor = ProjectionHead(
            params.proj_dim, params.pred_hidden, params.proj_dim, 2, norm
        )

    def view_pair(self) -> tuple[ViewSpec, ViewSpec]:
        """The paper's symmetric pair (two draws of one recipe), or BYOL's (`views=byol`)."""
        if self.params.views == "byol":
            return byol_views(self.ctx.image_size)
        spec = simsiam_view(self.ctx.image_size)
        return spec, spec

    def loss(self, views: Views) -> StepOutput:
        """Symmetric negative cosine, in [-1, 1]; logs z_std, the per-dimension std of the
        unit projections (about 1/sqrt(proj_dim) when healthy, 0 when collapsed)."""
        z1, z2 = self.project(views.crops[0]), self.project(views.crops[1])
        p1, p2 = self.predictor(z1), self.predictor(z2)
        # float32 at least: near convergence the cosines are close to 1, where bf16 keeps
        # ~3 digits (float64, as in the tests, stays float64).
        work = torch.promote_types(p1.dtype, torch.float32)
        p1, p2, z1, z2 = p1.to(work), p2.to(work), z1.to(work), z2.to(work)
        # simsiam_loss detaches its second argument: the stop-gradient on the targets.
        loss = 0.5 * (simsiam_loss(p1, z2) + simsiam_loss(p2, z1))
        z_std = F.normalize(z1.detach(), dim=1).std(dim=0).mean()
        return StepOutput(loss=loss, logs={"z_std": z_std})
