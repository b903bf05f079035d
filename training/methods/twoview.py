"""What Barlow Twins, VICReg and SimSiam share: BYOL's two asymmetric views of each
image, and backbone -> projector. Registers no method itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from training.augment import byol_views
from training.methods.base import Method, P, Views

if TYPE_CHECKING:
    from training.augment import Augmenter
    from training.data import Batch


class TwoViewMethod(Method[P]):
    """A method over two views and one projector; subclasses set `projector` and `loss`."""

    projector: nn.Module

    def make_views(self, batch: Batch, augment: Augmenter) -> Views:
        """uint8 [B, C, H, W] -> two asymmetric views (BYOL's recipe, which these papers
        use; SimSiam's has no solarize, which BYOL adds on view 2 only)."""
        spec1, spec2 = byol_views(self.ctx.image_size)
        return Views(crops=[augment(batch.images, spec1), augment(batch.images, spec2)])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, h, w] -> projections [B, proj_dim] (not normalised), with grad."""
        out: torch.Tensor = self.projector(self.backbone(x))
        return out
