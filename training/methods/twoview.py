"""What Barlow Twins, VICReg and SimSiam share: two views of each image, and backbone ->
projector. Registers no method itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from contrastkit.training.augment import byol_views
from contrastkit.training.methods.base import Method, P, Views

if TYPE_CHECKING:
    from contrastkit.training.augment import Augmenter, ViewSpec
    from contrastkit.training.data import Batch


class TwoViewMethod(Method[P]):
    """A method over two views and one projector; subclasses set `projector` and `loss`."""

    projector: nn.Module

    def view_pair(self) -> tuple[ViewSpec, ViewSpec]:
        """The two views' recipes at the run's image size. Default: BYOL's asymmetric pair
        (blur 1.0/0.1, solarize 0/0.2), which Barlow Twins and VICReg take from BYOL in
        their papers; SimSiam overrides it with its own symmetric recipe."""
        return byol_views(self.ctx.image_size)

    def make_views(self, batch: Batch, augment: Augmenter) -> Views:
        """uint8 [B, C, H, W] -> two views, float [B, 3, size, size] each (`view_pair`)."""
        spec1, spec2 = self.view_pair()
        return Views(crops=[augment(batch.images, spec1), augment(batch.images, spec2)])

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, h, w] -> projections [B, proj_dim] (not normalised), with grad."""
        out: torch.Tensor = self.projector(self.backbone(x))
        return out
