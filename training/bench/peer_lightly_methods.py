"""The peer's methods for `bench quality --quick`: lightly's own losses, heads, momentum
helpers and transforms, sized by OUR resolved recipe (our method's Params, our views).

Imported only by contrastkit.training.bench.peer_lightly, in the peer's environment (lightly
installed: scripts/peer-lightly-env.sh). What comes from our code is the recipe (the
Params values and the ViewSpecs our methods draw) and the backbone; what is lightly's is
the method: a broken loss, head or EMA of ours then shows as a gap to this peer.

Every `loss` returns OUR loss's units, so criterion (b) compares like with like; the
only method whose lightly loss has other units is BYOL (NegativeCosineSimilarity is
-cos; ours is the sum over the two view pairs of mean(2 - 2 cos) = 4 + 2 (l12 + l21)),
and the peer back-propagates that mapped value so its gradient has our scale too.
CLIP and SigLIP have no lightly implementation: PEER_METHODS leaves them out.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from lightly import loss as lloss
from lightly.models import modules as lmod
from lightly.models.utils import (
    batch_shuffle,
    batch_unshuffle,
    deactivate_requires_grad,
    update_momentum,
)
from lightly.transforms import BYOLView1Transform, SimCLRViewTransform, SwaVViewTransform
from lightly.transforms.multi_crop_transform import MultiCropTranform
from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from contrastkit.training.augment import IMAGENET_MEAN, IMAGENET_STD, ViewSpec
from contrastkit.training.data import Batch
from contrastkit.training.methods import get_method
from contrastkit.training.methods.base import MethodContext

PEER_METHODS = (
    "simclr", "moco", "moco-tuned", "byol", "simsiam", "barlow", "vicreg", "swav", "dino",
)  # fmt: skip
NORMALIZE = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


class _SpecRecorder:
    """Stands in for our Augmenter: records each ViewSpec a method asks for."""

    def __init__(self) -> None:
        self.specs: list[ViewSpec] = []

    def __call__(self, images: Tensor, spec: ViewSpec) -> Tensor:
        self.specs.append(spec)
        return torch.zeros(images.shape[0], 3, spec.size, spec.size)


def our_view_specs(method: str, params: Any, ctx: MethodContext) -> list[ViewSpec]:
    """The ViewSpecs our `method` draws per image, in order (exactly what its make_views
    asks our Augmenter for), read from a throwaway instance on a one-layer backbone."""
    ours = get_method(method)(nn.Flatten(), 3 * 4 * 4, params, ctx)
    recorder = _SpecRecorder()
    batch = Batch(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), None, None, torch.arange(2))
    ours.make_views(batch, recorder)  # type: ignore[arg-type]
    return recorder.specs


def _colour(spec: ViewSpec) -> dict[str, Any]:
    b, c, s, h = spec.jitter
    return {
        "cj_prob": spec.jitter_p, "cj_strength": 1.0, "cj_bright": b, "cj_contrast": c,
        "cj_sat": s, "cj_hue": h, "random_gray_scale": spec.gray_p,
        "gaussian_blur": spec.blur_p, "sigmas": spec.blur_sigma, "hf_prob": spec.hflip_p,
        "normalize": NORMALIZE,
    }  # fmt: skip


def lightly_transform(specs: list[ViewSpec]) -> Callable[[Any], list[Tensor]]:
    """Our views as lightly's transforms (PIL image -> list of [3, s, s] tensors).

    Two-view recipes: one lightly view transform per spec (SimCLRViewTransform, or
    BYOLView1Transform where the spec solarizes). Multi-crop (a spec cropping less than
    the whole scale range): lightly's MultiCropTranform with SwaVViewTransform's colour
    pipeline, the global and small crops' sizes, counts and scales from our specs."""
    if all(s.scale[1] == 1.0 for s in specs):
        views = []
        for s in specs:
            kw = _colour(s) | {"input_size": s.size, "min_scale": s.scale[0]}
            if s.solarize_p:
                views.append(BYOLView1Transform(**kw, solarization_prob=s.solarize_p))
            else:
                views.append(SimCLRViewTransform(**kw))
        return MultiViewTransform(views)  # type: ignore[arg-type]
    big, small = specs[0], specs[-1]
    n_big = sum(1 for s in specs if s == big)
    return MultiCropTranform(  # type: ignore[no-any-return]
        crop_sizes=(big.size, small.size),
        crop_counts=(n_big, len(specs) - n_big),
        crop_min_scales=(big.scale[0], small.scale[0]),
        crop_max_scales=(big.scale[1], small.scale[1]),
        transforms=SwaVViewTransform(**_colour(big)),  # type: ignore[arg-type]
    )


def _target(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    deactivate_requires_grad(target)
    return target


class PeerMethod(nn.Module):
    """backbone + lightly's heads and loss. `loss(views, step, epoch)` -> scalar in our
    loss's units; `before_step` after backward (freezing); `after_step` after the
    optimiser step (EMA, queues), as our engine orders them."""

    def __init__(self, backbone: nn.Module, feat: int, p: Any, ctx: MethodContext) -> None:
        super().__init__()
        self.backbone, self.p, self.ctx = backbone, p, ctx
        self.pairs: list[tuple[nn.Module, nn.Module]] = []  # (online, EMA target)

    def loss(self, views: list[Tensor], step: int, epoch: int) -> Tensor:
        raise NotImplementedError

    def before_step(self, step: int, epoch: int) -> None:
        """After backward, before the optimiser step."""

    def after_step(self, step: int, total: int) -> None:
        """EMA of every (online, target) pair: lightly's cosine_schedule from
        base_momentum to final_momentum, with lightly's update_momentum."""
        if self.pairs:
            m = cosine_schedule(step + 1, total, self.p.base_momentum, self.p.final_momentum)
            for online, target in self.pairs:
                update_momentum(online, target, m)


class SimCLR(PeerMethod):
    def __init__(self, backbone: nn.Module, feat: int, p: Any, ctx: MethodContext) -> None:
        super().__init__(backbone, feat, p, ctx)
        norm = p.head_norm == "batch"
        self.head = lmod.SimCLRProjectionHead(feat, p.proj_hidden, p.proj_dim, p.proj_layers, norm)
        self.criterion = lloss.NTXentLoss(temperature=p.temperature)

    def loss(self, views: list[Tensor], step: int, epoch: int) -> Tensor:
        # both views as one batch of 2B, as SimCLR's reference code (and ours) does
        z1, z2 = self.head(self.backbone(torch.cat(views[:2]))).chunk(2)
        return self.criterion(z1, z2)  # type: ignore[no-any-return]


class MoCo(PeerMethod):
    """MoCo v2 (and moco-tuned): NTXentLoss with a memory bank of keys is lightly's MoCo."""

    def __init__(self, backbone: nn.Module, feat: int, p: Any, ctx: MethodContext) -> None:
        super().__init__(backbone, feat, p, ctx)
        norm = p.head_norm == "batch"
        self.head = lmod.MoCoProjectionHead(feat, p.proj_hidden, p.proj_dim, 2, norm)
        self.key_backbone, self.key_head = _target(backbone), _target(self.head)
        self.pairs = [(self.backbone, self.key_backbone), (self.head, self.key_head)]
        # ours caps the queue at one epoch of keys (more would hold stale duplicates)
        keys = ctx.global_batch * (2 if p.symmetric else 1)
        epoch_keys = ctx.steps_per_epoch * ctx.global_batch
        size = max(keys, min(p.queue_size, epoch_keys) // keys * keys)
        self.criterion = lloss.NTXentLoss(p.temperature, memory_bank_size=(size, p.proj_dim))

    def _keys(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            if not self.p.shuffle_bn:
                return self.key_head(self.key_backbone(x))  # type: ignore[no-any-return]
            shuffled, order = batch_shuffle(x)
            return batch_unshuffle(self.key_head(self.key_backbone(shuffled)), order)

    def loss(self, views: list[Tensor], step: int, epoch: int) -> Tensor:
        x1, x2 = views[0], views[1]
        loss = self.criterion(self.head(self.backbone(x1)), self._keys(x2))
        if self.p.symmetric:
            loss = 0.5 * (loss + self.criterion(self.head(self.backbone(x2)), self._keys(x1)))
        return loss  # type: ignore[no-any-return]


class BYOL(PeerMethod):
    def __init__(self, backbone: nn.Module, feat: int, p: Any, ctx: MethodContext) -> None:
        super().__init__(backbone, feat, p, ctx)
        self.head = lmod.BYOLProjectionHead(feat, p.proj_hidden, p.proj_dim)
        self.predictor = lmod.BYOLPredictionHead(p.proj_dim, p.pred_hidden, p.proj_dim)
        self.target_backbone, self.target_head = _target(backbone), _target(self.head)
        self.pairs = [(self.backbone, self.target_backbone), (self.head, self.target_head)]
        self.criterion = lloss.NegativeCosineSimilarity()

    def loss(self, views: list[Tensor], step: int, epoch: int) -> Tensor:
        x1, x2 = views[0], views[1]
        p1 = self.predictor(self.head(self.backbone(x1)))
        p2 = self.predictor(self.head(self.backbone(x2)))
        with torch.no_grad():
            z1 = self.target_head(self.target_backbone(x1))
            z2 = self.target_head(self.target_backbone(x2))
        # our units: sum over the pairs of mean(2 - 2 cos) = 4 + 2 * (-cos12 - cos21)
        return 4.0 + 2.0 * (self.criterion(p1, z2) + self.criterion(p2, z1))


class TwoViewProjector(PeerMethod):
    """SimSiam, Barlow Twins, VICReg: each view through backbone and head on its own."""

    head: nn.Module

    def project(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        return self.head(self.backbone(views[0])), self.head(self.backbone(views[1]))


class SimSiam(TwoViewProjector):
    def __init__(self, backbone: nn.Module, feat: int, p: Any, ctx: MethodContext) -> None:
        super().__init__(backbone, feat, p, ctx)
        self.head = lmod.SimSiamProjectionHead(feat, p.proj_hidden, p.proj_dim)
        self.predictor = lmod.SimSiamPredictionHead(p.proj_dim, p.pred_hidden, p.proj_dim)
        self.criterion = lloss.NegativeCosineSimilarity()

    def loss(self, views: list[Tensor], step: int, epoch: int) -> Tensor:
        z1, z2 = self.project(views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return 0.5 * (self.criterion(p1, z2.detach()) + self.criterion(p2, z1.detach()))


class Barlow(TwoViewProjector):
    def __init__(self, backbone: nn.Module, feat: int, p: Any, ctx: MethodContext) -> None:
        super().__init__(backbone, feat, p, ctx)
        self.head = lmod.BarlowTwinsProjectionHead(feat, p.proj_hidden, p.proj_dim)
        self.criterion = lloss.BarlowTwinsLoss(lambda_param=p.lambd)

    def loss(self, views: list[Tensor], step: int, epoch: int) -> Tensor:
        return self.criterion(*self.project(views))  # type: ignore[no-any-return]


class VICReg(TwoViewProjector):
    def __init__(self, backbone: nn.Module, feat: int, p: Any, ctx: MethodContext) -> None:
        super().__init__(backbone, feat, p, ctx)
        self.head = lmod.heads.VICRegProjectionHead(feat, p.proj_hidden, p.proj_dim, p.proj_layers)
        self.criterion = lloss.VICRegLoss(p.sim_coeff, p.std_coeff, p.cov_coeff, eps=p.eps)

    def loss(self, views: list[Tensor], step: int, epoch: int) -> Tensor:
        return self.criterion(*self.project(views))  # type: ignore[no-any-return]


def _same_size_backbone(backbone: nn.Module, views: list[Tensor]) -> list[Tensor]:
    """Crops of one side through the backbone as one batch (as ours and SwAV's code)."""
    out: list[Tensor] = []
    i = 0
    while i < len(views):
        j = i
        while j < len(views) and views[j].shape == views[i].shape:
            j += 1
        out += list(backbone(torch.cat(views[i:j])).chunk(j - i))
        i = j
    return out


class SwAV(PeerMethod):
    def __init__(self, backbone: nn.Module, feat: int, p: Any, ctx: MethodContext) -> None:
        from contrastkit.training.methods.swav import AUTO_QUEUE_LENGTH, AUTO_QUEUE_MAX_BATCH

        super().__init__(backbone, feat, p, ctx)
        frozen = p.freeze_prototypes_steps
        if frozen is None:
            frozen = round(p.freeze_prototypes_epochs * ctx.steps_per_epoch)
        self.head = lmod.SwaVProjectionHead(feat, p.proj_hidden, p.proj_dim)
        self.prototypes = lmod.SwaVPrototypes(p.proj_dim, p.n_prototypes, frozen)
        self.criterion = lloss.SwaVLoss(p.temperature, p.sinkhorn_iterations, p.epsilon)
        # our queue rule (contrastkit.training.methods.swav): automatic at small batches, one epoch
        # max
        length = p.queue_length
        if length is None:
            small = ctx.global_batch <= AUTO_QUEUE_MAX_BATCH
            length = min(AUTO_QUEUE_LENGTH, ctx.steps_per_epoch * ctx.global_batch) if small else 0
        self.queue_length, self.filled = int(length), 0
        self.queue: Tensor
        self.register_buffer("queue", torch.zeros(2, self.queue_length, p.proj_dim))

    def loss(self, views: list[Tensor], step: int, epoch: int) -> Tensor:
        self.prototypes.normalize()
        feats = _same_size_backbone(self.backbone, views)
        z = F.normalize(self.head(torch.cat(feats)), dim=1).split(views[0].shape[0])
        scores = [self.prototypes(zi, step) for zi in z]
        queued = None
        if self.queue_length and self.filled >= self.queue_length:
            with torch.no_grad():
                queued = [self.prototypes(self.queue[i], step) for i in range(2)]
        if self.queue_length and step >= self.p.queue_start_step:
            with torch.no_grad():  # FIFO: the newest keys first
                new = torch.stack([z[0].detach(), z[1].detach()])
                self.queue.copy_(torch.cat([new, self.queue], dim=1)[:, : self.queue_length])
                self.filled = min(self.queue_length, self.filled + z[0].shape[0])
        return self.criterion(scores[:2], scores[2:], queued)  # type: ignore[no-any-return]


class DINO(PeerMethod):
    def __init__(self, backbone: nn.Module, feat: int, p: Any, ctx: MethodContext) -> None:
        super().__init__(backbone, feat, p, ctx)
        if p.proj_layers != 3:
            raise ValueError("lightly's DINOProjectionHead has 3 layers; ours is set otherwise")
        # lightly freezes the last layer by whole epochs (ours: by steps of the same span)
        freeze = math.ceil(p.freeze_last_layer_epochs)
        dims = (feat, p.proj_hidden, p.proj_dim, p.out_dim, p.head_norm == "batch")
        self.head = lmod.DINOProjectionHead(*dims, freeze)
        # a weight-normed head cannot be deep-copied: a second one, loaded from the first,
        # so that the teacher starts as an exact copy of the student (as ours does)
        self.teacher_head = lmod.DINOProjectionHead(*dims)
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_head)
        self.teacher_backbone = _target(backbone)
        self.pairs = [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]
        self.criterion = lloss.DINOLoss(
            p.out_dim, p.warmup_teacher_temp, p.teacher_temp,
            round(p.warmup_teacher_temp_epochs), p.student_temp, p.center_momentum,
        )  # fmt: skip

    def loss(self, views: list[Tensor], step: int, epoch: int) -> Tensor:
        with torch.no_grad():
            teacher = [self.teacher_head(f) for f in
                       _same_size_backbone(self.teacher_backbone, views[:2])]  # fmt: skip
        student = [self.head(f) for f in _same_size_backbone(self.backbone, views)]
        return self.criterion(teacher, student, epoch=epoch)  # type: ignore[no-any-return]

    def before_step(self, step: int, epoch: int) -> None:
        self.head.cancel_last_layer_gradients(epoch)


PEERS: dict[str, type[PeerMethod]] = {
    "simclr": SimCLR, "moco": MoCo, "moco-tuned": MoCo, "byol": BYOL, "simsiam": SimSiam,
    "barlow": Barlow, "vicreg": VICReg, "swav": SwAV, "dino": DINO,
}  # fmt: skip
