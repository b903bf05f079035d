"""The Method interface: what every contrastive method provides to the one engine.

The engine owns the loop (optimiser, schedule, precision, checkpoints, EMA updates);
a method owns its networks, its views and its loss. Data flows:

    Batch (uint8 images on the device) --make_views--> Views --loss--> StepOutput

`make_views` is separate from `loss` so tests (and the distributed equivalence test)
can feed the same pre-made views to one process or to several.

The contract, in full (the engine and export use nothing else of a method):
- class attributes: `name`, `Params` (a MethodParams dataclass), `default_lr`,
  `default_weight_decay`, `default_optimizer`, `DEFAULT_SOURCES`, `needs_text`;
- `make_views`, `loss` (abstract), `image_features` (kNN), `no_weight_decay`, `lr_scales`;
- hooks: `on_before_step`, `on_after_step`, and `allows_sync_bn`;
- EMA methods derive from `MomentumMethod` (its `momentum_pairs`, `momentum_at`);
- `export_parts()`: what an export takes (ExportParts); image-text methods override it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import torch
from torch import nn

from contrastkit.training.momentum import cosine_momentum

if TYPE_CHECKING:
    from contrastkit.training.augment import Augmenter
    from contrastkit.training.config import TrainConfig
    from contrastkit.training.data import Batch
    from contrastkit.training.encoders.nets.text_towers import TextTower
    from contrastkit.training.encoders.pretrained_clip import StartModel


@dataclass
class MethodParams:
    """Base of every method's `Params` dataclass (`--set key=value` hyper-parameters).

    SOURCES: {field: where its default comes from} (a paper, a recipe, or an engineering
    choice), printed by `contrastive train --list-settings`. Fields are the subclass's;
    this class adds none, so each method keeps its own field order.
    """

    SOURCES: ClassVar[dict[str, str]] = {}


class MomentumParams(MethodParams):  # not a dataclass: its annotations are not fields
    """What every EMA method's Params defines (as dataclass fields, in its own order):
    the EMA coefficient goes from `base_momentum` to `final_momentum` over the run
    (cosine, as BYOL; equal values keep it constant, as MoCo)."""

    base_momentum: float
    final_momentum: float


P = TypeVar("P", bound=MethodParams)
PM = TypeVar("PM", bound=MomentumParams)


@dataclass
class Views:
    """What a method's loss consumes.

    crops: float tensors [B, 3, h, w], normalised; the first `n_global` are the large
        views (multi-crop appends smaller ones, which may have another h, w).
    texts: prepared captions for CLIP, else None: token ids ({"input_ids": [B, L], ...})
        or, for a frozen text tower, its cached outputs ({"embeddings": [B, d]}).
    caption_groups: int64 [B] or None: CLIP's multi-positive ids (equal ids: the captions
        are interchangeable, e.g. the labels of class-name captions); None: CLIP compares
        the prepared captions themselves.
    """

    crops: list[torch.Tensor]
    n_global: int = 2
    texts: dict[str, torch.Tensor] | None = None
    caption_groups: torch.Tensor | None = None


def split_views(views: Views, parts: int) -> list[Views]:
    """Views of B samples -> `parts` Views of B / parts samples each (gradient
    accumulation's micro-batches), in order; the same object when parts is 1."""
    if parts == 1:
        return [views]
    crops = [c.chunk(parts) for c in views.crops]
    texts = {k: v.chunk(parts) for k, v in views.texts.items()} if views.texts is not None else None
    groups = views.caption_groups.chunk(parts) if views.caption_groups is not None else None
    return [
        Views(
            crops=[c[i] for c in crops],
            n_global=views.n_global,
            texts={k: v[i] for k, v in texts.items()} if texts is not None else None,
            caption_groups=groups[i] if groups is not None else None,
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


@dataclass(frozen=True)
class ExportParts:
    """What an export takes from a trained method (`Method.export_parts`).

    The exported image embedding is head(backbone(x)), or backbone(x) when head is None;
    `projector` replaces the head when the user asks for it (`contrastive export
    --projector`; None: the method has none to offer). An image-text method also gives
    its text tower, logit multiplier and prompt templates.
    prefixes: the state-dict prefixes of every exported weight: a checkpoint missing any
        of them cannot be exported.
    """

    backbone: nn.Module
    head: nn.Module | None = None
    projector: nn.Module | None = None
    text: TextTower | None = None
    logit_scale: float | None = None
    templates: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ("backbone.", "projector.")


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
    # a whole pretrained image-text model to fine-tune
    # (contrastkit.training.encoders.pretrained_clip)
    start: StartModel | None = None


def solo_learn_sources(recipe: str, optimizer: str, lr: float, wd: float) -> dict[str, str]:
    """DEFAULT_SOURCES for a method whose optimiser defaults are solo-learn's CIFAR recipe
    `scripts/pretrain/cifar/<recipe>` (lr per 256 images: solo-learn scales it by the
    global batch / 256, as `lr_scaling=linear` does; LARS with eta 0.02 and clip_lr, as
    TrainConfig's lars_eta / lars_clip)."""
    where = f"solo-learn CIFAR recipe (scripts/pretrain/cifar/{recipe}"
    lars = ", kwargs eta 0.02, clip_lr True" if optimizer == "lars" else ""
    return {
        "optimizer": f"{where}: optimizer.name {optimizer}{lars})",
        "lr": f"{where}: optimizer.lr {lr:g} per 256 images)",
        "weight_decay": f"{where}: optimizer.weight_decay {wd:g})",
    }


class Method(nn.Module, ABC, Generic[P]):
    """One contrastive method. Subclasses register with `@register` (methods/__init__.py).

    Class attributes a subclass sets:
        name: the CLI name (`--method NAME`).
        Params: its MethodParams dataclass (the type `P` of `self.params`).
        default_lr / default_weight_decay / default_optimizer: per-method defaults,
            used when the run config leaves them unset. lr is per 256 images.
        DEFAULT_SOURCES: {"lr" | "weight_decay" | "optimizer": where that default is from}.
        needs_text: True for image-text methods (CLIP).
    A method with a projection head assigns it to `self.projector` (export offers it).
    """

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]]
    default_lr: ClassVar[float] = 0.3
    default_weight_decay: ClassVar[float] = 1e-6
    default_optimizer: ClassVar[str] = "sgd"
    DEFAULT_SOURCES: ClassVar[dict[str, str]] = {}
    needs_text: ClassVar[bool] = False

    @classmethod
    def optimizer_defaults(
        cls, cfg: TrainConfig
    ) -> tuple[tuple[str, float, float], dict[str, str]]:
        """((optimizer, lr per 256 images, weight decay), where each is from) for a run
        that leaves them unset; a method may choose by the run (CLIP fine-tuning)."""
        del cfg  # the class's own defaults suit every run of most methods
        defaults = (cls.default_optimizer, cls.default_lr, cls.default_weight_decay)
        return defaults, dict(cls.DEFAULT_SOURCES)

    def __init__(self, backbone: nn.Module, feat_dim: int, params: P, ctx: MethodContext):
        super().__init__()
        self.backbone = backbone
        self.feat_dim = feat_dim
        self.params: P = params
        self.ctx = ctx
        # None until a subclass assigns its head (nn.Module then registers it as a child)
        self.projector: nn.Module | None = None

    @abstractmethod
    def make_views(self, batch: Batch, augment: Augmenter) -> Views:
        """Augment a batch of uint8 images (and tokenise captions) into the loss's inputs."""

    @abstractmethod
    def loss(self, views: Views) -> StepOutput:
        """Views -> loss. Under DDP, negatives/assignments span all ranks
        (contrastkit.training.dist)."""

    def forward(self, views: Views) -> StepOutput:
        """DDP hooks gradient sync onto `forward`, so the engine calls the loss through it."""
        return self.loss(views)

    # -- hooks the engine calls; defaults do nothing ------------------------------------
    @property
    def allows_sync_bn(self) -> bool:
        """May the engine convert BatchNorm to SyncBatchNorm under multi-GPU DDP? False
        when the method arranges its own BN statistics (MoCo's shuffled BN)."""
        return True

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

    def lr_scales(self) -> dict[str, float]:
        """{parameter name: multiplier on the scheduled lr}; names as in
        `named_parameters()`, unnamed parameters train at 1.0. What layer-wise lr decay
        (contrastkit.training.methods.layer_decay) and a separate lr for a logit scale return."""
        return {}

    def export_parts(self) -> ExportParts:
        """What an export takes: the backbone (its features are the embedding) and the
        projector, if any, for `--projector`."""
        return ExportParts(backbone=self.backbone, projector=self.projector)


class MomentumMethod(Method[PM]):
    """A method with EMA targets (BYOL, MoCo, DINO): after each optimiser step the engine
    moves every target towards its online module by `momentum_at(progress)`."""

    @abstractmethod
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) module pairs the engine updates by EMA after each step."""

    def momentum_at(self, progress: float) -> float:
        """EMA coefficient at `progress` in [0, 1]: cosine from base to final (BYOL)."""
        p = self.params
        return cosine_momentum(p.base_momentum, p.final_momentum, progress)
