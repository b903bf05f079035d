"""The Method interface: what every contrastive method provides to the one engine.

The engine owns the loop (optimiser, schedule, precision, checkpoints, EMA updates);
a method owns its networks, its views and its loss. Data flows:

    Batch (uint8 images on the device) --make_views--> Views --loss--> StepOutput

`make_views` is separate from `loss` so tests (and the distributed equivalence test)
can feed the same pre-made views to one process or to several.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from training.momentum import cosine_momentum

if TYPE_CHECKING:
    from training.augment import Augmenter
    from training.data import Batch


@dataclass
class Views:
    """What a method's loss consumes.

    crops: float tensors [B, 3, h, w], normalised; the first `n_global` are the large
        views (multi-crop appends smaller ones, which may have another h, w).
    texts: prepared captions for CLIP, else None: token ids ({"input_ids": [B, L], ...})
        or, for a frozen text tower, its cached outputs ({"embeddings": [B, d]}).
    """

    crops: list[torch.Tensor]
    n_global: int = 2
    texts: dict[str, torch.Tensor] | None = None


def split_views(views: Views, parts: int) -> list[Views]:
    """Views of B samples -> `parts` Views of B / parts samples each (gradient
    accumulation's micro-batches), in order; the same object when parts is 1."""
    if parts == 1:
        return [views]
    crops = [c.chunk(parts) for c in views.crops]
    texts = {k: v.chunk(parts) for k, v in views.texts.items()} if views.texts is not None else None
    return [
        Views(
            crops=[c[i] for c in crops],
            n_global=views.n_global,
            texts={k: v[i] for k, v in texts.items()} if texts is not None else None,
        )
        for i in range(parts)
    ]


@dataclass
class StepOutput:
    """loss: scalar tensor to back-propagate (this process's share of the global mean).

    logs: detached scalar tensors (e.g. positive similarity, logit scale); the engine
    turns them into floats only when it logs, so a step never waits on the GPU.
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class MethodContext:
    """Facts about the run that a method may need when it builds itself."""

    device: torch.device
    image_size: int
    total_steps: int
    steps_per_epoch: int
    global_batch: int
    world_size: int = 1
    classes: list[str] | None = None  # class names, when the data set has labels
    channels: int = 3
    has_texts: bool = False  # the data set carries captions (pairs data)


class Method(nn.Module, ABC):
    """One contrastive method. Subclasses register with `@register` (methods/__init__.py).

    Class attributes a subclass sets:
        name: the CLI name (`--method NAME`).
        Params: a dataclass of the method's hyper-parameters (`--set key=value`).
        default_lr / default_weight_decay / default_optimizer: per-method defaults,
            used when the run config leaves them unset. lr is per 256 images.
        needs_text: True for image-text methods (CLIP).
    """

    name: ClassVar[str]
    Params: ClassVar[type]
    default_lr: ClassVar[float] = 0.3
    default_weight_decay: ClassVar[float] = 1e-6
    default_optimizer: ClassVar[str] = "sgd"
    needs_text: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, feat_dim: int, params: Any, ctx: MethodContext):
        super().__init__()
        self.backbone = backbone
        self.feat_dim = feat_dim
        self.params = params
        self.ctx = ctx

    @abstractmethod
    def make_views(self, batch: Batch, augment: Augmenter) -> Views:
        """Augment a batch of uint8 images (and tokenise captions) into the loss's inputs."""

    @abstractmethod
    def loss(self, views: Views) -> StepOutput:
        """Views -> loss. Under DDP, negatives/assignments span all ranks (training.dist)."""

    def forward(self, views: Views) -> StepOutput:
        """DDP hooks gradient sync onto `forward`, so the engine calls the loss through it."""
        return self.loss(views)

    # -- hooks the engine calls; defaults do nothing ------------------------------------
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) module pairs the engine updates by EMA after each step."""
        return []

    def momentum_at(self, progress: float) -> float:
        """EMA coefficient at `progress` in [0, 1]: cosine from base to final (BYOL).

        Methods with momentum pairs define `base_momentum` and `final_momentum` params.
        """
        base = float(self.params.base_momentum)
        return cosine_momentum(base, float(getattr(self.params, "final_momentum", base)), progress)

    def on_before_step(self, step: int) -> None:
        """After backward, before the optimiser step (e.g. SwAV freezes prototypes)."""

    def on_after_step(self, step: int) -> None:
        """After the optimiser step and the EMA update (e.g. SwAV renormalises prototypes)."""

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised float images [B, 3, h, w] -> backbone features [B, feat_dim].

        What kNN evaluation and export use: the backbone, not the projector.
        """
        return self.backbone(images)

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay besides biases and norms."""
        return set()
