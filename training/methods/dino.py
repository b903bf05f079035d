"""DINO (Caron et al., ICCV 2021): self-distillation with no labels.

    student: crop -> backbone -> head -> [B, out_dim] logits        (every crop, trained)
    teacher: crop -> EMA backbone -> EMA head -> [B, out_dim]       (global crops, no grad)
    loss = dino_loss: CE(softmax((teacher - centre) / T_t), softmax(student / T_s))
           over every (global crop i, crop v != i) pair

The head is an MLP to a low-dimensional bottleneck, L2-normalised, then a weight-normalised
linear layer (no bias) to `out_dim` "prototypes"; the weight norm's gain is fixed at 1
(the paper's `norm_last_layer=True`), so the logits are cosines in [-1, 1].
Collapse is avoided by two opposite forces on the teacher's targets: centring (subtract a
running mean, which pushes towards the uniform distribution) and sharpening (a low
teacher temperature, which pushes towards one-hot). The centre is an EMA of the teacher
outputs' batch mean over the GLOBAL batch (all ranks), kept as a buffer so checkpoints hold
it and a resumed run continues exactly. The teacher is an EMA of the student whose
momentum follows a cosine schedule from 0.996 to 1 (the engine applies it through
`momentum_pairs` and `momentum_at`, as for BYOL).

Views: DINO's own (contrastkit.training.augment.dino_views, after the official
DataAugmentationDINO): 2 global crops (scale 0.14-1) + `n_small_crops` local ones (scale 0.05-0.14),
the scales the official README gives for ResNets (ViTs use 0.4-1 / 0.05-0.4). Every crop gets BYOL's
jitter 0.4/0.4/0.2/0.1 (p 0.8) and grayscale 0.2 at every image size; blur p 1.0 on global crop 1, p
0.1 and solarize p 0.2 on global crop 2, p 0.5 on the local crops (blur only on crops of 64 px and
more). `views=swav` gives SwAV's multi-crop instead (SimCLR's jitter by image size, blur 0.5
everywhere, no solarize): what this project used before `views` existed, so checkpoints from then
resume with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.training import dist
from contrastkit.training.augment import dino_views, multicrop_views
from contrastkit.training.heads import norm_layer
from contrastkit.training.losses import dino_loss
from contrastkit.training.methods import register
from contrastkit.training.methods.base import (
    MethodContext,
    MomentumMethod,
    MomentumParams,
    StepOutput,
    Views,
    solo_learn_sources,
)
from contrastkit.training.methods.swav import same_size_runs
from contrastkit.training.momentum import make_target

if TYPE_CHECKING:
    from collections.abc import Callable

    from contrastkit.training.augment import Augmenter, ViewSpec
    from contrastkit.training.data import Batch

# "dino": the paper's views; "swav": SwAV's multi-crop (this project's DINO views before)
VIEW_RECIPES: dict[str, Callable[[int, int, int | None], list[ViewSpec]]] = {
    "dino": dino_views,
    "swav": multicrop_views,
}


@dataclass
class DINOParams(MomentumParams):
    """DINO's hyper-parameters (`--set key=value`); SOURCES says where each default is from."""

    # 4096 prototypes, not the paper's 65536 (sized for ImageNet's 1000 classes): on data
    # sets of 10-100 classes a 65536-way softmax mostly costs memory (a 65536 x 256 last
    # layer per network, and [B, 65536] logits per crop) while most prototypes stay unused.
    out_dim: int = 4096
    proj_hidden: int = 2048  # the paper's 2048
    proj_dim: int = 256  # bottleneck; the paper's 256
    proj_layers: int = 3  # MLP layers before the bottleneck's normalisation; paper 3
    # "batch" | "layer" | "none". The paper has no norm in the head; here BatchNorm is the
    # default because on small data without it the centred teacher targets collapsed to
    # uniform (loss = ln out_dim) within ~30 steps in every setting we tried on digits
    # (momentum, out_dim, teacher_temp 0.01-0.04, AdamW): the random network maps all
    # images to nearly one direction, and BatchNorm spreads the batch apart again.
    head_norm: str = "batch"
    student_temp: float = 0.1
    teacher_temp: float = 0.04  # paper: 0.04 (0.07 with a 30-epoch warm-up for ViTs)
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 0.0  # official default 0 (30 with teacher_temp 0.07)
    center_momentum: float = 0.9
    base_momentum: float = 0.996
    final_momentum: float = 1.0
    n_small_crops: int = 6  # local crops; official default 8, 6 to save compute on small data
    small_size: int = 0  # side of the local crops; 0: round(image_size * 96 / 224), >= 8
    freeze_last_layer_epochs: float = 1.0  # paper: the last layer is frozen for 1 epoch
    views: str = "dino"  # dino (DataAugmentationDINO) | swav (SwAV's multi-crop)

    SOURCES: ClassVar[dict[str, str]] = {
        "out_dim": "engineering: 4096 for small data (paper: 65536 for ImageNet)",
        "proj_hidden": "paper: Caron et al. 2021 (DINO head, 2048 hidden)",
        "proj_dim": "paper: DINO (256-d bottleneck)",
        "proj_layers": "paper: DINO (3-layer MLP)",
        "head_norm": "engineering: BatchNorm (paper: none; without it digits collapsed)",
        "student_temp": "paper: DINO (0.1)",
        "teacher_temp": "paper: DINO official default (0.04)",
        "warmup_teacher_temp": "paper: DINO official default (0.04)",
        "warmup_teacher_temp_epochs": "paper: DINO official default (0; 30 with 0.07)",
        "center_momentum": "paper: DINO (0.9)",
        "base_momentum": "paper: DINO (0.996)",
        "final_momentum": "paper: DINO (cosine to 1)",
        "n_small_crops": "paper: DINO multi-crop (official default 8 local crops; 6 here)",
        "small_size": "paper: DINO (96 px local crops at 224, scaled with image_size)",
        "freeze_last_layer_epochs": "paper: DINO official default (1 epoch)",
        "views": "paper: DINO's DataAugmentationDINO (jitter 0.4/0.4/0.2/0.1; blur "
        "1/0.1/0.5; solarize 0.2 on global crop 2), crop scales of its ResNet-50 run",
    }


def _check(p: DINOParams) -> None:
    checks = [
        (p.out_dim >= 1, "out_dim must be >= 1"),
        (min(p.proj_hidden, p.proj_dim) >= 1, "proj_hidden and proj_dim must be >= 1"),
        (p.proj_layers >= 1, "proj_layers must be >= 1"),
        (min(p.student_temp, p.teacher_temp, p.warmup_teacher_temp) > 0,
         "student_temp, teacher_temp and warmup_teacher_temp must be > 0"),
        (p.warmup_teacher_temp_epochs >= 0, "warmup_teacher_temp_epochs must be >= 0"),
        (0 <= p.center_momentum <= 1, "center_momentum must be in [0, 1]"),
        (0 <= p.base_momentum <= p.final_momentum <= 1,
         "need 0 <= base_momentum <= final_momentum <= 1"),
        (min(p.n_small_crops, p.small_size) >= 0, "n_small_crops and small_size must be >= 0"),
        (p.freeze_last_layer_epochs >= 0, "freeze_last_layer_epochs must be >= 0"),
        (p.head_norm in ("batch", "layer", "none"), "head_norm must be batch, layer or none"),
        (p.views in VIEW_RECIPES, f"views must be one of {', '.join(VIEW_RECIPES)}"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ValueError(f"dino: {message}")


class DINOHead(nn.Module):
    """[B, in_dim] features -> [B, out_dim] logits (cosines to the prototypes, in [-1, 1]).

    MLP: (Linear, norm, GELU) x (layers - 1), Linear to `bottleneck`; L2 normalisation;
    then `last`, a linear layer without bias whose rows are normalised in every forward
    pass (weight normalisation with the gain fixed at 1). `last.weight` [out_dim,
    bottleneck] is the raw direction the optimiser moves.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        bottleneck: int,
        out_dim: int,
        layers: int = 3,
        norm: str = "none",
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            # a bias is redundant in front of a norm with its own shift
            blocks += [
                nn.Linear(dim, hidden_dim, bias=norm == "none"),
                norm_layer(norm, hidden_dim),
            ]
            blocks.append(nn.GELU())
            dim = hidden_dim
        blocks.append(nn.Linear(dim, bottleneck))
        self.mlp = nn.Sequential(*blocks)
        self.last = nn.Linear(bottleneck, out_dim, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                # the paper's init: truncated normal, std 0.02; zero biases
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.mlp(x)
        # float32 at least, outside autocast: the logits are divided by a temperature as
        # low as 0.04, which would amplify bf16 rounding of the cosines 25-fold.
        work = torch.promote_types(z.dtype, torch.float32)
        with torch.autocast(z.device.type, enabled=False):
            z = F.normalize(z.to(work), dim=1)
            w = F.normalize(self.last.weight.to(work), dim=1)
            return F.linear(z, w)


@torch.no_grad()
def teacher_sum(teacher: list[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """(sum [K] in `dtype`, number of rows) of the teacher outputs of the GLOBAL batch.

    teacher: this rank's outputs, one [B, K] per global crop; the sum is all-reduced over
    ranks, so every rank gets the same totals as one process on the whole batch.
    """
    rows = torch.cat([t.detach().to(dtype) for t in teacher])  # [n_global * B, K]
    return dist.all_reduce_sum_(rows.sum(dim=0)), rows.shape[0] * dist.world_size()


@torch.no_grad()
def updated_center(
    center: torch.Tensor, teacher: list[torch.Tensor], momentum: float
) -> torch.Tensor:
    """The centre after one step: momentum * center + (1 - momentum) * batch mean.

    center: [K]; teacher: this rank's teacher outputs, one [B, K] per global crop. The batch
    mean is over every row of every global crop of the GLOBAL batch (all ranks).
    Returns a new [K] tensor in center's dtype.
    """
    total, count = teacher_sum(teacher, center.dtype)
    return center * momentum + total / count * (1 - momentum)


def teacher_temp_at(p: DINOParams, step: int, steps_per_epoch: int) -> float:
    """Teacher temperature at 0-based `step`: linear from warmup_teacher_temp (step 0) to
    teacher_temp at step warmup_teacher_temp_epochs * steps_per_epoch, then constant."""
    warmup = p.warmup_teacher_temp_epochs * steps_per_epoch
    if step >= warmup:
        return p.teacher_temp
    return p.warmup_teacher_temp + (p.teacher_temp - p.warmup_teacher_temp) * step / warmup


@register
class DINO(MomentumMethod[DINOParams]):
    """DINO with a multi-crop student and an EMA teacher that sees the global crops.

    Optimiser defaults: solo-learn's CIFAR recipe (scripts/pretrain/cifar/dino.yaml): LARS
    (eta 0.02, clipped), lr 0.3 per 256 images, weight decay 1e-6. The paper trains ViTs
    with AdamW (lr 5e-4 per 256, weight decay 0.04 -> 0.4, gradient clipping 3.0); the
    official code's ResNet-50 example uses SGD (lr 0.03, weight decay 1e-4). Pick those
    with --optimizer / --lr / --set weight_decay / grad_clip.
    """

    name = "dino"
    Params = DINOParams
    default_optimizer, default_lr, default_weight_decay = "lars", 0.3, 1e-6
    DEFAULT_SOURCES = solo_learn_sources("dino.yaml", "lars", 0.3, 1e-6)

    center: torch.Tensor

    def __init__(
        self, backbone: nn.Module, feat_dim: int, params: DINOParams, ctx: MethodContext
    ) -> None:
        _check(params)
        super().__init__(backbone, feat_dim, params, ctx)
        p = params
        self.head = DINOHead(
            feat_dim, p.proj_hidden, p.proj_dim, p.out_dim, p.proj_layers, p.head_norm
        )
        # Built after the head, so the teacher starts as an exact copy of the student.
        self.teacher_backbone = make_target(backbone)
        self.teacher_head = make_target(self.head)
        # A buffer, not a parameter: no gradient, and checkpoints hold it.
        self.register_buffer("center", torch.zeros(p.out_dim))
        recipe = VIEW_RECIPES[p.views]
        self.view_specs = recipe(ctx.image_size, p.n_small_crops, p.small_size or None)
        self.freeze_last_layer_steps = round(p.freeze_last_layer_epochs * ctx.steps_per_epoch)
        # host-side step counter (saved through get/set_extra_state): the teacher
        # temperature is a Python float, so no step reads a device tensor for it
        self.steps_done = 0
        # (teacher output sum [K], rows) of the step so far; applied once the step is taken
        self._pending_center: tuple[torch.Tensor, int] | None = None

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]

    def make_views(self, batch: Batch, augment: Augmenter) -> Views:
        """uint8 [B, C, H, W] -> 2 global crops [B,3,S,S] then n_small_crops [B,3,s,s]."""
        return Views(crops=[augment(batch.images, spec) for spec in self.view_specs])

    def teacher_temp(self) -> float:
        """The teacher temperature of the next step (from the steps taken so far)."""
        return teacher_temp_at(self.params, self.steps_done, self.ctx.steps_per_epoch)

    def student_logits(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """Crops (each [B,3,h,w]) -> student logits, one [B, out_dim] per crop, with grad.

        Same-size crops share one backbone call; the head sees all crops at once.
        """
        feats = [self.backbone(torch.cat(run)) for run in same_size_runs(crops)]
        out: torch.Tensor = self.head(torch.cat(feats))
        return list(out.split(crops[0].shape[0]))

    @torch.no_grad()
    def teacher_logits(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """Global crops (each [B,3,S,S]) -> teacher logits, one [B, out_dim] each, no grad."""
        out: torch.Tensor = self.teacher_head(self.teacher_backbone(torch.cat(crops)))
        return list(out.split(crops[0].shape[0]))

    def loss(self, views: Views) -> StepOutput:
        """DINO loss (scalar, >= 0); logs the teacher temperature and the mean entropy of
        the teacher's targets (near 0: one-hot collapse; near ln out_dim: uniform)."""
        student = self.student_logits(views.crops)
        teacher = self.teacher_logits(views.crops[: views.n_global])
        temp = self.teacher_temp()
        loss = dino_loss(student, teacher, self.center, temp, self.params.student_temp)
        # The centre moves only once the step is taken (on_after_step): a skipped,
        # non-finite step must not move it. The all-reduce runs here, in the forward pass
        # that every rank executes in step. Under gradient accumulation the engine calls
        # this once per micro-batch: the sums add up, so the centre moves once, by the mean
        # of the whole batch. The engine clears the gradients (set_to_none) before a step's
        # first micro-batch and after a skipped step: gradient-free weights mean a new step.
        total, count = teacher_sum(teacher, self.center.dtype)
        if self._pending_center is not None and self.head.mlp[0].weight.grad is not None:
            total, count = self._pending_center[0] + total, self._pending_center[1] + count
        self._pending_center = (total, count)
        with torch.no_grad():
            logits = torch.cat(teacher).to(self.center.dtype) - self.center
            log_q = F.log_softmax(logits / temp, dim=1)
            entropy = -(log_q.exp() * log_q).sum(dim=1).mean()
        logs = {"teacher_temp": loss.new_tensor(temp).detach(), "teacher_entropy": entropy}
        return StepOutput(loss=loss, logs=logs)

    def on_before_step(self, step: int) -> None:
        """Freeze the last layer for the first epoch(s): drop its gradient, so that no
        optimiser (momentum, weight decay) moves it. The paper finds this stabilises the
        start, when the prototypes would otherwise chase a still random student."""
        if step < self.freeze_last_layer_steps:
            self.head.last.weight.grad = None

    def on_after_step(self, step: int) -> None:
        """Apply the step's centre update; `step` is the 0-based index just taken."""
        if self._pending_center is not None:
            total, count = self._pending_center
            m = self.params.center_momentum
            self.center.copy_(self.center * m + total / count * (1 - m))
            self._pending_center = None
        self.steps_done = step + 1

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([self.steps_done], dtype=torch.int64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.steps_done = int(state.reshape(-1)[0])
