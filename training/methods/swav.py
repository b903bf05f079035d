"""SwAV (Caron et al., NeurIPS 2020): swapped prediction of online cluster assignments.

Every crop is embedded (backbone -> MLP -> unit sphere) and scored against K unit-norm
prototypes. The two global crops' scores are turned into soft "codes" by Sinkhorn-Knopp
(equal-size clusters over the whole global batch, all ranks); each crop then predicts
the code of the *other* global crops: cross-entropy against softmax(scores / T).

Defaults follow the paper's ImageNet recipe, which public CIFAR-size setups keep too:
3000 prototypes, a 2048-128 projector, T = 0.1, eps = 0.05, 3 Sinkhorn iterations, 2+4
crops, LARS with weight decay 1e-6. K = 3000 is not tied to the number of classes (the
paper finds little sensitivity as long as K is well above it); on small data or to save
memory ~10x the number of classes (e.g. 100-300) also works.
The prototypes are frozen for the first epoch (`freeze_prototypes_epochs`; the paper's
`freeze_prototypes_niters` is one epoch in both its recipes: 313 steps at batch 4096,
5005 at batch 256), which keeps them from collapsing while the embeddings are still
random. Counting in epochs keeps that meaning at any data-set size and batch;
`freeze_prototypes_steps` still sets an exact step count (and wins when given).

Queue (on by default when the global batch is 256 or less): the global crops' embeddings
of the last `queue_length` samples, scored with the *current* prototypes and stacked
above the batch for Sinkhorn, so the equipartition is over more samples than one batch;
only the batch rows' codes are kept. Without it a small batch has too few samples to
split evenly over 3000 prototypes and SwAV collapses; the paper's batch-256 recipe uses a
queue of 3840 (15 batches). The automatic length is 3840, capped to one epoch of samples
(older embeddings come from a much earlier network, and would hold images twice).
Under DDP each rank holds the same global queue (filled with gathered embeddings) and
feeds its own slice to Sinkhorn, whose sums are all-reduced: the transport is over
exactly the rows a single process would use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.training.augment import multicrop_views
from contrastkit.training.dist import gather_no_grad, rank, world_size
from contrastkit.training.heads import ProjectionHead, Prototypes
from contrastkit.training.losses import sinkhorn, swav_loss
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

log = logging.getLogger(__name__)

# The queue switches itself on at global batches up to this (SwAV's batch-256 recipe
# uses one; its batch-4096 recipe does not), with the paper's batch-256 length.
AUTO_QUEUE_MAX_BATCH = 256
AUTO_QUEUE_LENGTH = 3840


@dataclass
class SwAVParams(MethodParams):
    """SwAV's hyper-parameters (`--set key=value`); SOURCES says where each default is from."""

    n_prototypes: int = 3000
    proj_hidden: int = 2048
    proj_dim: int = 128
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    n_small_crops: int = 4  # 0: plain two-crop SwAV
    small_size: int = 0  # side of the small crops; 0: round(image_size * 96 / 224), >= 8
    freeze_prototypes_epochs: float = 1.0  # rounded to whole steps
    freeze_prototypes_steps: int | None = None  # None: from freeze_prototypes_epochs
    # None: AUTO_QUEUE_LENGTH (capped to one epoch) when the global batch is
    # <= AUTO_QUEUE_MAX_BATCH, else no queue; 0 disables the queue
    queue_length: int | None = None
    queue_start_step: int = 0  # start filling the queue at this step (used once full)
    head_norm: str = "batch"

    SOURCES: ClassVar[dict[str, str]] = {
        "n_prototypes": "paper: Caron et al. 2020 (SwAV), ImageNet recipe",
        "proj_hidden": "paper: SwAV (2048-128 MLP)",
        "proj_dim": "paper: SwAV (2048-128 MLP)",
        "temperature": "paper: SwAV (T = 0.1)",
        "epsilon": "paper: SwAV (eps = 0.05)",
        "sinkhorn_iterations": "paper: SwAV (3 iterations)",
        "n_small_crops": "paper: SwAV multi-crop (2x224 + 6x96; 4 small crops here for speed)",
        "small_size": "paper: SwAV (96 px small crops at 224, scaled with image_size)",
        "freeze_prototypes_epochs": "paper: SwAV repo (freeze_prototypes_niters = 1 epoch)",
        "freeze_prototypes_steps": "override of freeze_prototypes_epochs (None: unset)",
        "queue_length": "paper: SwAV batch-256 recipe (queue 3840), on at global batch <= 256",
        "queue_start_step": "engineering: use the queue as soon as it is full",
        "head_norm": "paper: SwAV (BatchNorm in the projection MLP)",
    }


def _check(p: SwAVParams) -> None:
    checks = [
        (p.n_prototypes >= 1, "n_prototypes must be >= 1"),
        (min(p.proj_hidden, p.proj_dim) >= 1, "proj_hidden and proj_dim must be >= 1"),
        (p.temperature > 0, "temperature must be > 0"),
        (p.epsilon > 0, "epsilon must be > 0"),
        (p.sinkhorn_iterations >= 1, "sinkhorn_iterations must be >= 1"),
        (min(p.n_small_crops, p.small_size) >= 0, "n_small_crops and small_size must be >= 0"),
        (p.freeze_prototypes_epochs >= 0, "freeze_prototypes_epochs must be >= 0"),
        ((p.freeze_prototypes_steps or 0) >= 0, "freeze_prototypes_steps must be >= 0"),
        (min(p.queue_length or 0, p.queue_start_step) >= 0, "queue settings must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"swav: {message}")


def resolve_queue_length(requested: int | None, ctx: MethodContext) -> int:
    """The queue length in samples: `requested` when given, else automatic.

    Automatic: AUTO_QUEUE_LENGTH at global batches <= AUTO_QUEUE_MAX_BATCH, capped to
    one epoch of samples and rounded down to a multiple of the process count; 0 (no
    queue) at larger batches, which have enough samples for Sinkhorn on their own.
    """
    if requested is not None:
        return requested
    if ctx.global_batch > AUTO_QUEUE_MAX_BATCH:
        return 0
    epoch = max(1, ctx.steps_per_epoch) * ctx.global_batch
    length = min(AUTO_QUEUE_LENGTH, epoch)
    length -= length % ctx.world_size
    log.info(
        "swav: global batch %d <= %d, so a queue of %d samples (queue_length=0 disables it)",
        ctx.global_batch, AUTO_QUEUE_MAX_BATCH, length,
    )  # fmt: skip
    return length


def freeze_steps(p: SwAVParams, steps_per_epoch: int) -> int:
    """Steps with frozen prototypes: `freeze_prototypes_steps` when given, else
    `freeze_prototypes_epochs` epochs rounded to whole steps."""
    if p.freeze_prototypes_steps is not None:
        return p.freeze_prototypes_steps
    return round(p.freeze_prototypes_epochs * steps_per_epoch)


def same_size_runs(crops: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive crops of equal spatial size, grouped: one backbone call per group."""
    runs: list[list[torch.Tensor]] = []
    for crop in crops:
        if runs and runs[-1][0].shape[-2:] == crop.shape[-2:]:
            runs[-1].append(crop)
        else:
            runs.append([crop])
    return runs


@register
class SwAV(Method[SwAVParams]):
    name = "swav"
    Params = SwAVParams
    # solo-learn's CIFAR recipe (LARS eta 0.02, clipped). The paper's 4.8 at batch 4096
    # is 0.3 per 256 with unclipped LARS at eta 0.001 (SwAV's code: apex LARC, clip=False);
    # its batch-256 run, like solo-learn, uses 0.6 per 256.
    default_optimizer, default_lr, default_weight_decay = "lars", 0.6, 1e-6
    DEFAULT_SOURCES = solo_learn_sources("swav.yaml", "lars", 0.6, 1e-6)

    queue: torch.Tensor

    projector: ProjectionHead

    def __init__(
        self, backbone: nn.Module, feat_dim: int, params: SwAVParams, ctx: MethodContext
    ) -> None:
        _check(params)
        length = resolve_queue_length(params.queue_length, ctx)
        if length % ctx.world_size:
            # every rank feeds an equal slice of the queue to Sinkhorn
            raise ValueError(
                f"swav: queue_length ({length}) must be a multiple of the "
                f"number of processes ({ctx.world_size})"
            )
        super().__init__(backbone, feat_dim, params, ctx)
        p = params
        self.queue_length = length
        self.freeze_steps = freeze_steps(p, ctx.steps_per_epoch)
        self.projector = ProjectionHead(feat_dim, p.proj_hidden, p.proj_dim, norm=p.head_norm)
        self.prototypes = Prototypes(p.proj_dim, p.n_prototypes)
        self.view_specs = multicrop_views(ctx.image_size, p.n_small_crops, p.small_size or None)
        # [global crop, row, dim]; newest rows first. A buffer: checkpoints hold it.
        self.register_buffer("queue", torch.zeros(2, length, p.proj_dim))
        # host-side counters (saved through get/set_extra_state) so that no step has to
        # read a device tensor to decide whether to use the queue
        self.queue_filled = 0
        self.steps_done = 0
        self._pending: list[torch.Tensor] | None = None  # embeddings to queue after the step

    def make_views(self, batch: Batch, augment: Augmenter) -> Views:
        """2 global crops [B,3,S,S] then n_small_crops small ones [B,3,s,s]."""
        return Views(crops=[augment(batch.images, spec) for spec in self.view_specs])

    def embed(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """Crops (each [B,3,h,w]) -> unit embeddings, one [B, proj_dim] per crop.

        Same-size crops share one backbone call (the paper's grouping; fewer, larger
        kernels); the projector sees all crops at once.
        """
        feats = [self.backbone(torch.cat(run)) for run in same_size_runs(crops)]
        z = F.normalize(self.projector(torch.cat(feats)), dim=1)
        return list(z.split(crops[0].shape[0]))

    def loss(self, views: Views) -> StepOutput:
        z = self.embed(views.crops)
        scores = list(self.prototypes(torch.cat(z)).split(z[0].shape[0]))  # [B, K] per crop
        n_global = views.n_global
        codes = self.codes(z[:n_global])
        if self.queue_length and self.steps_done >= self.params.queue_start_step:
            # queued in on_after_step, i.e. only once the step was taken (a skipped,
            # non-finite step must not poison the queue)
            self._pending = [gather_no_grad(zi.detach().float()) for zi in z[:2]]
        loss = swav_loss(scores, codes, self.params.temperature)
        with torch.no_grad():
            picked = torch.cat(codes).argmax(1)
            hit = scores[0].new_zeros(self.params.n_prototypes, dtype=torch.float32)
            usage = hit.index_fill_(0, picked, 1.0).mean()  # share of prototypes picked
        return StepOutput(loss, {"proto_usage": usage})

    @torch.no_grad()
    def codes(self, z_global: list[torch.Tensor]) -> list[torch.Tensor]:
        """Unit embeddings [B, d] of the global crops -> Sinkhorn codes [B, K] (no grad).

        The scores are recomputed in float32 outside autocast: Sinkhorn exponentiates
        scores / 0.05, where bf16 rounding would be amplified 20-fold.
        """
        use_queue = self.queue_length > 0 and self.queue_filled >= self.queue_length
        weight = self.prototypes.layer.weight.float()
        out = []
        with torch.autocast(z_global[0].device.type, enabled=False):
            for i, z in enumerate(z_global):
                s = z.float() @ weight.t()
                if use_queue:
                    local = self.queue[i].tensor_split(world_size())[rank()]
                    s = torch.cat([local @ weight.t(), s])
                q = sinkhorn(s, self.params.epsilon, self.params.sinkhorn_iterations)
                out.append(q[-z.shape[0] :])
        return out

    @torch.no_grad()
    def _push(self, news: list[torch.Tensor]) -> None:
        """Put the global crops' embeddings (all ranks', [N, d] each) at the queue's front."""
        length = self.queue.shape[1]
        for i, new in enumerate(news):
            self.queue[i] = torch.cat([new, self.queue[i]])[:length]
        self.queue_filled = min(length, self.queue_filled + news[0].shape[0])

    def on_before_step(self, step: int) -> None:
        """Freeze the prototypes for the first `freeze_steps` steps: drop their gradient,
        so that no optimiser (momentum, weight decay, Adam) moves them."""
        if step < self.freeze_steps:
            for p in self.prototypes.parameters():
                p.grad = None

    def on_after_step(self, step: int) -> None:
        """Back onto the unit sphere; `step` is the 0-based index of the step just taken."""
        self.prototypes.normalize_()
        if self._pending is not None:
            self._push(self._pending)
            self._pending = None
        self.steps_done = step + 1

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([self.steps_done, self.queue_filled], dtype=torch.int64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.steps_done, self.queue_filled = (int(v) for v in state.tolist())
