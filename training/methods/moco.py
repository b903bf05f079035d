"""MoCo v2 (Chen et al. 2020, after He et al. 2019): a momentum key encoder and a queue.

    view 1 -> backbone -> projector -> q            (the query encoder, trained)
    view 2 -> key backbone -> key projector -> k    (an EMA of the query encoder, no grad)
    loss = info_nce(q, k, queue, T); then the keys of the whole global batch are enqueued

The queue is a registered buffer, so checkpoints hold it and a resumed run continues
with the same negatives. Every rank enqueues the same gathered keys, so the queues of
all ranks stay identical without any extra communication.

Two registered recipes share this code:

- `moco`: MoCo v2 as published (facebookresearch/moco, `--mlp --aug-plus --cos`): key
  momentum 0.999, crops of scale 0.2-1 with ColorJitter(0.4, 0.4, 0.4, 0.1), a
  Linear-ReLU-Linear head without BatchNorm, T = 0.2, a 65536-key queue, SGD at lr 0.03
  per 256 images with weight decay 1e-4.
- `moco-tuned`: the variant tuned on small data sets (the defaults of `moco` before it
  followed the paper): momentum 0.99, BatchNorm in the head, crops of scale 0.08-1 with
  SimCLR's size-dependent colour jitter, LARS at lr 0.4 per 256 with weight decay 1e-5.
  Its momentum, BN head, crop scale and LARS are MoCo v3's choices (Chen, Xie & He 2021),
  but it keeps v2's queue and one-directional loss, and has no predictor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.training import dist
from contrastkit.training.augment import ViewSpec, moco_v2_view, simclr_view
from contrastkit.training.heads import ProjectionHead
from contrastkit.training.losses import info_nce
from contrastkit.training.methods import register
from contrastkit.training.methods.base import (
    MethodContext,
    MomentumMethod,
    MomentumParams,
    StepOutput,
    Views,
)
from contrastkit.training.momentum import make_target

if TYPE_CHECKING:
    from contrastkit.training.augment import Augmenter
    from contrastkit.training.data import Batch

log = logging.getLogger(__name__)


@dataclass
class MoCoParams(MomentumParams):
    """MoCo v2's hyper-parameters (`--set key=value`); SOURCES says where each is from."""

    temperature: float = 0.2
    # Clamped to one epoch of keys and to a multiple of the keys enqueued per step;
    # 0 means no queue: the other keys of the global batch are the negatives.
    queue_size: int = 65536
    proj_hidden: int = 2048
    proj_dim: int = 128
    base_momentum: float = 0.999  # constant, as MoCo v1/v2
    final_momentum: float = 0.999
    shuffle_bn: bool = True
    symmetric: bool = False  # both views serve as queries (twice the compute per step)
    head_norm: str = "none"  # MoCo v2's Linear-ReLU-Linear head; "batch" adds BN
    crop_min_scale: float = 0.2  # random resized crops of area fraction [min, 1]

    SOURCES: ClassVar[dict[str, str]] = {
        "temperature": "paper: Chen et al. 2020 (MoCo v2), T = 0.2",
        "queue_size": "paper: He et al. 2019 (MoCo), 65536 on ImageNet; capped to one epoch",
        "proj_hidden": "paper: MoCo v2 (2048-d hidden layer)",
        "proj_dim": "paper: MoCo v1/v2 (128-d)",
        "base_momentum": "paper: MoCo v1/v2 (m = 0.999)",
        "final_momentum": "paper: MoCo v1/v2 (constant m)",
        "shuffle_bn": "paper: MoCo (shuffling BN)",
        "symmetric": "paper: MoCo v2 (one direction; the symmetric loss is MoCo v3's)",
        "head_norm": "paper: MoCo v2 (MLP head without BN)",
        "crop_min_scale": "paper: MoCo v2 aug_plus (RandomResizedCrop scale 0.2-1)",
    }


@dataclass
class MoCoTunedParams(MoCoParams):
    """`moco-tuned`: MoCo v2 with the settings tuned on small data sets (see the module)."""

    # Constant 0.99 rather than ImageNet's 0.999: with small data sets a run has few
    # steps, and a key encoder that averages over ~1000 steps would lag far behind.
    base_momentum: float = 0.99
    final_momentum: float = 0.99
    head_norm: str = "batch"
    crop_min_scale: float = 0.08

    SOURCES: ClassVar[dict[str, str]] = {
        **MoCoParams.SOURCES,
        "base_momentum": "tuned on digits (few steps); MoCo v3 also uses 0.99",
        "final_momentum": "tuned on digits (constant; MoCo v3 goes to 1.0)",
        "head_norm": "tuned on digits; MoCo v3 uses BN in its MLP heads",
        "crop_min_scale": "SimCLR / MoCo v3 (scale 0.08-1)",
    }


def queue_length(requested: int, keys_per_step: int, keys_per_epoch: int) -> int:
    """The queue size actually used, in rows.

    At most one epoch of keys, because a longer queue would hold several stale keys of
    the query's own image (false negatives); a multiple of `keys_per_step` so that an enqueue never
    wraps mid-batch and every key stays in the queue for the same number of steps.
    A warning says so when `requested` changes.
    """
    if requested < 0:
        raise ValueError(f"queue_size must be >= 0, got {requested}")
    if requested == 0:
        return 0
    cap = min(requested, max(keys_per_epoch, keys_per_step))
    size = max(keys_per_step, cap // keys_per_step * keys_per_step)
    if size != requested:
        log.warning(
            "MoCo queue_size %d -> %d: a multiple of the %d keys enqueued per step, "
            "and at most the %d images of one epoch",
            requested, size, keys_per_step, keys_per_epoch,
        )  # fmt: skip
    return size


@register
class MoCo(MomentumMethod[MoCoParams]):
    """MoCo v2: MLP head, temperature 0.2, blur in the views, a queue of negatives.

    Optimiser defaults: MoCo v2's SGD (momentum 0.9), lr 0.03 per 256 images, weight
    decay 1e-4, with the engine's cosine schedule (MoCo v2's `--cos`).
    """

    name = "moco"
    Params = MoCoParams
    default_lr = 0.03
    default_weight_decay = 1e-4
    default_optimizer = "sgd"
    DEFAULT_SOURCES: ClassVar[dict[str, str]] = {
        "lr": "paper: Chen et al. 2020 (MoCo v2), lr 0.03 at batch 256",
        "weight_decay": "paper: MoCo v2 (1e-4)",
        "optimizer": "paper: MoCo v2 (SGD, momentum 0.9)",
    }

    queue: torch.Tensor  # [K, proj_dim] float32 unit rows
    queue_ptr: torch.Tensor  # int64 scalar: the row the next key goes to

    projector: ProjectionHead

    def __init__(
        self, backbone: nn.Module, feat_dim: int, params: MoCoParams, ctx: MethodContext
    ) -> None:
        super().__init__(backbone, feat_dim, params, ctx)
        if params.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {params.temperature}")
        self.projector = ProjectionHead(
            feat_dim, params.proj_hidden, params.proj_dim, 2, params.head_norm
        )
        # Built after the projector, so the key encoder starts as an exact copy.
        self.key_backbone = make_target(backbone)
        self.key_projector = make_target(self.projector)
        keys_per_step = ctx.global_batch * (2 if params.symmetric else 1)
        size = queue_length(
            params.queue_size, keys_per_step, max(1, ctx.steps_per_epoch) * ctx.global_batch
        )
        # Random unit vectors: until real keys replace them they are harmless negatives.
        self.register_buffer("queue", F.normalize(torch.randn(size, params.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.key_backbone), (self.projector, self.key_projector)]

    def view_spec(self) -> ViewSpec:
        """MoCo v2's `aug_plus` view at the run's image size and crop scale."""
        return moco_v2_view(self.ctx.image_size, self.params.crop_min_scale)

    def make_views(self, batch: Batch, augment: Augmenter) -> Views:
        """uint8 [B, C, H, W] -> two views of `view_spec()` (with blur, as MoCo v2's)."""
        spec = self.view_spec()
        return Views(crops=[augment(batch.images, spec), augment(batch.images, spec)])

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, h, w] -> unit queries [B, proj_dim] float32, with gradient."""
        return F.normalize(self.projector(self.backbone(x)).float(), dim=1)

    @torch.no_grad()
    def _key_embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projector(self.key_backbone(x)).float(), dim=1)

    @property
    def allows_sync_bn(self) -> bool:
        """Shuffled BN replaces SyncBatchNorm by design (see `keys`)."""
        return not self.params.shuffle_bn

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 3, h, w] -> (local keys [B, d], global keys [B*world, d] in rank order).

        Shuffled BN: BatchNorm statistics over a batch that holds both a query's image
        and its key's image let the network find the positive through the statistics
        instead of the content. So the key encoder sees a random mix of the global
        batch on each rank, and the keys are put back in order afterwards. On one
        process the shuffle cannot change batch statistics; it still runs, so the code
        path that DDP uses is the one the tests cover.
        """
        if not self.params.shuffle_bn:
            k = self._key_embed(x)
            return k, dist.gather_no_grad(k)
        b, r = x.shape[0], dist.rank()
        x_all = dist.gather_no_grad(x)
        perm = dist.broadcast_(torch.randperm(x_all.shape[0], device=x.device), src=0)
        # Row j of the gathered keys belongs to image perm[j]: index by the inverse.
        k_all = dist.gather_no_grad(self._key_embed(x_all[perm[r * b : (r + 1) * b]]))
        k_all = k_all[torch.argsort(perm)]
        return k_all[r * b : (r + 1) * b], k_all

    def loss(self, views: Views) -> StepOutput:
        """InfoNCE of queries against their keys and the queue; then enqueue the keys.

        logs: pos_sim, the mean cosine between a query and its key.
        """
        x1, x2 = views.crops[0], views.crops[1]
        t = self.params.temperature
        # A copy, because the enqueue below writes in place to what backward would read.
        negatives = self.queue.clone() if self.queue.shape[0] else None
        q1 = self.query(x1)
        k2, k2_all = self.keys(x2)
        loss = info_nce(q1, k2, negatives, t)
        pos = (q1.detach() * k2).sum(1).mean()
        enqueue = [k2_all]
        if self.params.symmetric:
            q2 = self.query(x2)
            k1, k1_all = self.keys(x1)
            loss = 0.5 * (loss + info_nce(q2, k1, negatives, t))
            pos = 0.5 * (pos + (q2.detach() * k1).sum(1).mean())
            enqueue = [k1_all, k2_all]
        self._enqueue(torch.cat(enqueue))
        return StepOutput(loss=loss, logs={"pos_sim": pos})

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Write keys [n, d] at the pointer (wrapping) and advance it, without a host sync."""
        size = self.queue.shape[0]
        if size == 0:
            return
        keys = keys[-size:]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        # One non-finite key (a diverged step the engine skips) must not poison the
        # queue, and with it every later loss: such a batch is simply not enqueued.
        ok = torch.isfinite(keys).all()
        rows = torch.where(ok, keys.to(self.queue.dtype), self.queue[idx])
        self.queue.index_copy_(0, idx, rows)
        self.queue_ptr.copy_(
            torch.where(ok, (self.queue_ptr + keys.shape[0]) % size, self.queue_ptr)
        )


@register
class MoCoTuned(MoCo):
    """`moco-tuned`: MoCo v2 with the defaults tuned on small data sets (the module says
    which; `moco` before it followed the paper, and its old checkpoints resume as such).

    Optimiser: LARS (LARC-clipped, eta 0.001), lr 0.4 per 256 images, weight decay 1e-5,
    as for SimCLR (the comparison below was run with the earlier unclipped LARS at eta
    0.02). Plain SGD is sensitive to the lr here: in 10-epoch runs on `digits` (tiny
    backbone), SGD at 0.3 collapsed on one seed of two (kNN 28% against 66% at random
    init), while LARS at 0.2, 0.4 and 1.0 all reached 72-76%; the trust ratio makes each
    layer's step independent of the gradient's scale.
    """

    name = "moco-tuned"
    Params = MoCoTunedParams
    default_lr = 0.4
    default_weight_decay = 1e-5
    default_optimizer = "lars"
    DEFAULT_SOURCES: ClassVar[dict[str, str]] = {
        "lr": "tuned on digits (LARS 0.2-1.0 all work; 0.4 as SimCLR)",
        "weight_decay": "SimCLR's LARS recipe (1e-5)",
        "optimizer": "tuned on digits (SGD collapsed on one seed of two)",
    }

    def view_spec(self) -> ViewSpec:
        """SimCLR's view (colour jitter by image size) with crops of scale [min, 1]."""
        spec = simclr_view(self.ctx.image_size)
        return replace(spec, scale=(self.params.crop_min_scale, 1.0))
