"""BYOL (Grill et al. 2020): predict an EMA target's projection of the other view.

    online: view -> backbone -> projector -> predictor -> p       (trained)
    target: view -> target backbone -> target projector -> z'     (EMA of online, no grad)
    loss = byol_loss(p1, z2') + byol_loss(p2, z1')                (symmetric)

No negatives: collapse is avoided by the predictor and the slowly moving target,
whose momentum follows a cosine schedule from `base_momentum` to `final_momentum`
(the engine applies it through `momentum_pairs` and `momentum_at`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.training.augment import byol_views
from contrastkit.training.heads import ProjectionHead
from contrastkit.training.losses import byol_loss
from contrastkit.training.methods import register
from contrastkit.training.methods.base import (
    MethodContext,
    MomentumMethod,
    MomentumParams,
    StepOutput,
    Views,
    solo_learn_sources,
)
from contrastkit.training.momentum import make_target

if TYPE_CHECKING:
    from contrastkit.training.augment import Augmenter
    from contrastkit.training.data import Batch


@dataclass
class BYOLParams(MomentumParams):
    """BYOL's hyper-parameters (`--set key=value`); SOURCES says where each is from."""

    # The paper's 4096 hidden units even for small data: next to a ResNet's convolutions
    # the MLPs cost little (projector + predictor: ~5 M multiply-adds per image, against
    # ~560 M for ResNet-18 at 32x32), and these are the sizes BYOL was tuned with.
    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096
    base_momentum: float = 0.996
    final_momentum: float = 1.0
    head_norm: str = "batch"

    SOURCES: ClassVar[dict[str, str]] = {
        "proj_hidden": "paper: Grill et al. 2020 (BYOL), 4096 hidden units",
        "proj_dim": "paper: BYOL (256-d projection)",
        "pred_hidden": "paper: BYOL (predictor with 4096 hidden units)",
        "base_momentum": "paper: BYOL (tau_base = 0.996)",
        "final_momentum": "paper: BYOL (cosine schedule to 1)",
        "head_norm": "paper: BYOL (BatchNorm in the MLPs' hidden layer)",
    }


@register
class BYOL(MomentumMethod[BYOLParams]):
    """BYOL with an MLP projector and predictor (Linear, norm, ReLU, Linear each).

    Optimiser defaults: solo-learn's CIFAR recipe (scripts/pretrain/cifar/byol.yaml): LARS
    (contrastkit.training.engine.optim: eta 0.02, LARC-clipped, biases and norms exempt), lr 1.0 per
    256 images, weight decay 1e-5. The paper's unclipped LARS (eta 0.001) with lr 0.2 and
    wd 1.5e-6 is for 1000 ImageNet epochs at batch 4096.
    LARS's per-layer trust ratio is what BYOL was tuned with: without negatives, the loss's
    gradient is small and uneven across layers.
    """

    name = "byol"
    Params = BYOLParams
    default_optimizer, default_lr, default_weight_decay = "lars", 1.0, 1e-5
    DEFAULT_SOURCES = solo_learn_sources("byol.yaml", "lars", 1.0, 1e-5)

    projector: ProjectionHead

    def __init__(
        self, backbone: nn.Module, feat_dim: int, params: BYOLParams, ctx: MethodContext
    ) -> None:
        super().__init__(backbone, feat_dim, params, ctx)
        norm = params.head_norm
        self.projector = ProjectionHead(feat_dim, params.proj_hidden, params.proj_dim, 2, norm)
        self.predictor = ProjectionHead(
            params.proj_dim, params.pred_hidden, params.proj_dim, 2, norm
        )
        # Built after the projector, so the target starts as an exact copy of the online net.
        self.target_backbone = make_target(backbone)
        self.target_projector = make_target(self.projector)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]

    def make_views(self, batch: Batch, augment: Augmenter) -> Views:
        """uint8 [B, C, H, W] -> BYOL's two asymmetric views (blur / solarize differ)."""
        spec1, spec2 = byol_views(self.ctx.image_size)
        return Views(crops=[augment(batch.images, spec1), augment(batch.images, spec2)])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, h, w] -> online predictions [B, proj_dim], with gradient."""
        out: torch.Tensor = self.predictor(self.projector(self.backbone(x)))
        return out

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, h, w] -> target projections [B, proj_dim], no gradient."""
        out: torch.Tensor = self.target_projector(self.target_backbone(x))
        return out

    def loss(self, views: Views) -> StepOutput:
        """Symmetric BYOL loss, in [0, 8]; logs cos, the mean prediction-target cosine.

        Each view is its own forward pass (BatchNorm statistics per view), as in the
        reference implementation.
        """
        x1, x2 = views.crops[0], views.crops[1]
        p1, p2 = self.predict(x1), self.predict(x2)
        z1, z2 = self.target(x1), self.target(x2)
        # float32: near convergence 2 - 2cos is small, and bf16 keeps only ~3 digits of cos.
        p1, p2, z1, z2 = p1.float(), p2.float(), z1.float(), z2.float()
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        cos = 0.5 * (
            F.cosine_similarity(p1.detach(), z2, dim=1).mean()
            + F.cosine_similarity(p2.detach(), z1, dim=1).mean()
        )
        return StepOutput(loss=loss, logs={"cos": cos})
