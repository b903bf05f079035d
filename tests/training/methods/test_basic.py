"""SimCLR, MoCo v2 and BYOL on a tiny backbone, one process, CPU.

Each loss is checked against a recomputation written here with loops over samples
(not the vectorised code in contrastkit.training.losses), from the method's own networks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.training.augment import Augmenter
from contrastkit.training.data import Batch
from contrastkit.training.encoders.nets.backbones import BackboneSpec, build_backbone
from contrastkit.training.methods import Method, MethodContext, Views, get_method
from contrastkit.training.methods.byol import BYOL
from contrastkit.training.methods.moco import (
    MoCo,
    MoCoParams,
    MoCoTuned,
    MoCoTunedParams,
    queue_length,
)
from contrastkit.training.methods.simclr import SimCLR
from contrastkit.training.momentum import update_momentum
from tests.training.references import nt_xent_reference

B, SIZE, DIM = 16, 16, 32


def context(steps_per_epoch: int = 4, image_size: int = SIZE) -> MethodContext:
    return MethodContext(
        device=torch.device("cpu"),
        image_size=image_size,
        total_steps=100,
        steps_per_epoch=steps_per_epoch,
        global_batch=B,
    )


def build(cls: type[Method], ctx: MethodContext | None = None, **params: Any) -> Any:
    """A method over the tiny GroupNorm backbone with small heads (LayerNorm by default)."""
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone(BackboneSpec("tiny"))
    defaults: dict[str, Any] = {"proj_hidden": 64, "proj_dim": DIM, "head_norm": "layer"}
    if cls is BYOL:
        defaults["pred_hidden"] = 64
    return cls(backbone, feat_dim, cls.Params(**(defaults | params)), ctx or context())


def make_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (B, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return Batch(images=images, labels=None, texts=None, index=torch.arange(B))


def views(seed: int = 0, size: int = SIZE) -> Views:
    g = torch.Generator().manual_seed(seed)
    return Views(crops=[torch.randn(B, 3, size, size, generator=g) for _ in range(2)])


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.double(), dim=1)


def ce_at(logits: list[torch.Tensor], target: int) -> torch.Tensor:
    """-log softmax(logits)[target], from a list of scalar logits."""
    return -(logits[target] - torch.logsumexp(torch.stack(logits), 0))


def moco_loop(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> torch.Tensor:
    q, k, queue = unit(q), unit(k), unit(queue)
    terms = [ce_at([q[i] @ k[i] / t] + [q[i] @ row / t for row in queue], 0) for i in range(len(q))]
    return torch.stack(terms).mean()


def key_embed(m: MoCo, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(m.key_projector(m.key_backbone(x)), dim=1)


# -- views ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SimCLR, MoCo, BYOL])
def test_make_views_two_independent_views_at_ctx_size(cls: type[Method]) -> None:
    method = build(cls, context(image_size=12))
    out = method.make_views(make_batch(), Augmenter("cpu", seed=0))
    assert out.n_global == 2 and len(out.crops) == 2
    for crop in out.crops:
        assert crop.shape == (B, 3, 12, 12) and crop.dtype == torch.float32
        assert torch.isfinite(crop).all()
    # Independent draws: the two views of an image differ.
    assert (out.crops[0] - out.crops[1]).abs().amax(dim=(1, 2, 3)).min() > 1e-3


def test_registry_finds_the_three_methods() -> None:
    assert [get_method(n) for n in ("simclr", "moco", "byol")] == [SimCLR, MoCo, BYOL]


# -- losses against loops ------------------------------------------------------------------


@pytest.mark.parametrize("head_norm", ["layer", "batch"])
def test_simclr_loss_is_nt_xent_of_its_projections(head_norm: str) -> None:
    m = build(SimCLR, head_norm=head_norm, temperature=0.3)
    v = views()
    out = m.loss(v)
    with torch.no_grad():
        z1, z2 = m.project(torch.cat(v.crops)).chunk(2)
        want = torch.tensor(nt_xent_reference(z1, z2, 0.3), dtype=torch.float64)
        pos = torch.stack([unit(z1)[i] @ unit(z2)[i] for i in range(B)]).mean()
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logs["pos_sim"].double(), pos, atol=1e-5, rtol=0)


@pytest.mark.parametrize("head_norm", ["layer", "batch"])
def test_moco_loss_is_cross_entropy_over_key_and_queue(head_norm: str) -> None:
    # With BatchNorm the shuffle must be undone exactly, or keys and queries mismatch.
    m = build(MoCo, head_norm=head_norm, queue_size=64, temperature=0.2)
    v = views()
    queue = m.queue.clone()
    out = m.loss(v)
    with torch.no_grad():
        q = m.projector(m.backbone(v.crops[0]))
        k = key_embed(m, v.crops[1])
        want = moco_loop(q, k, queue, 0.2)
    torch.testing.assert_close(out.loss.double(), want, atol=1e-5, rtol=1e-5)


def test_moco_symmetric_averages_both_directions_and_enqueues_both_views() -> None:
    m = build(MoCo, queue_size=64, symmetric=True)
    v = views()
    queue = m.queue.clone()
    out = m.loss(v)
    with torch.no_grad():
        q1, q2 = (m.projector(m.backbone(x)) for x in v.crops)
        k1, k2 = (key_embed(m, x) for x in v.crops)
        want = (moco_loop(q1, k2, queue, 0.2) + moco_loop(q2, k1, queue, 0.2)) / 2
    torch.testing.assert_close(out.loss.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.queue[: 2 * B], torch.cat([k1, k2]), atol=1e-6, rtol=0)
    assert int(m.queue_ptr) == 2 * B


def test_moco_without_queue_uses_the_batch_keys_as_negatives() -> None:
    m = build(MoCo, queue_size=0)
    v = views()
    out = m.loss(v)
    with torch.no_grad():
        q, k = unit(m.projector(m.backbone(v.crops[0]))), unit(key_embed(m, v.crops[1]))
        want = torch.stack([ce_at([q[i] @ k[j] / 0.2 for j in range(B)], i) for i in range(B)])
    torch.testing.assert_close(out.loss.double(), want.mean(), atol=1e-5, rtol=1e-5)


def test_byol_loss_is_symmetric_cosine_regression_on_the_target() -> None:
    m = build(BYOL)
    v = views()
    out = m.loss(v)
    with torch.no_grad():
        p1, p2 = (unit(m.predictor(m.projector(m.backbone(x)))) for x in v.crops)
        z1, z2 = (unit(m.target_projector(m.target_backbone(x))) for x in v.crops)
        want = sum((2 - 2 * p1[i] @ z2[i]) + (2 - 2 * p2[i] @ z1[i]) for i in range(B)) / B
    torch.testing.assert_close(out.loss.double(), want, atol=1e-5, rtol=1e-5)
    assert 0 <= float(out.loss.detach()) <= 8


# -- gradients -----------------------------------------------------------------------------


def _trained_and_frozen(m: Method) -> tuple[list[nn.Module], list[nn.Module]]:
    if isinstance(m, SimCLR):
        return [m.backbone, m.projector], []
    if isinstance(m, MoCo):
        return [m.backbone, m.projector], [m.key_backbone, m.key_projector]
    assert isinstance(m, BYOL)
    return [m.backbone, m.projector, m.predictor], [m.target_backbone, m.target_projector]


@pytest.mark.parametrize("cls", [SimCLR, MoCo, BYOL])
def test_gradients_reach_online_networks_only(cls: type[Method]) -> None:
    m = build(cls, head_norm="batch")
    m.loss(views()).loss.backward()
    trained, frozen = _trained_and_frozen(m)
    for module in trained:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    for module in frozen:
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())


# -- MoCo's queue --------------------------------------------------------------------------


def test_moco_enqueues_normalised_keys_and_wraps_around() -> None:
    m = build(MoCo, queue_size=2 * B)
    assert m.queue.shape == (2 * B, DIM)
    torch.testing.assert_close(m.queue.norm(dim=1), torch.ones(2 * B))
    keys = []
    for step, want_ptr in enumerate([B, 0, B]):
        v = views(seed=step)
        before = m.queue.clone()
        start = int(m.queue_ptr)
        m.loss(v)
        keys.append(key_embed(m, v.crops[1]))
        assert int(m.queue_ptr) == want_ptr
        torch.testing.assert_close(m.queue[start : start + B], keys[-1], atol=1e-6, rtol=0)
        rest = torch.ones(2 * B, dtype=torch.bool)
        rest[start : start + B] = False
        assert torch.equal(m.queue[rest], before[rest])  # the other rows are untouched
    # After the wrap: rows 0..B-1 hold the third batch, rows B..2B-1 still the second.
    torch.testing.assert_close(m.queue, torch.cat([keys[2], keys[1]]), atol=1e-6, rtol=0)


def test_moco_skips_non_finite_keys() -> None:
    m = build(MoCo, queue_size=2 * B)
    before, ptr = m.queue.clone(), int(m.queue_ptr)
    bad = torch.ones(B, DIM)
    bad[3, 5] = math.nan
    m._enqueue(bad)
    assert torch.equal(m.queue, before) and int(m.queue_ptr) == ptr


def test_queue_length_clamps_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="contrastkit.training.methods.moco"):
        assert queue_length(64, 16, 1000) == 64
        assert not caplog.records
        assert queue_length(1000, 16, 48) == 48  # one epoch of keys at most
        assert queue_length(40, 16, 1000) == 32  # a multiple of the keys per step
        assert queue_length(8, 16, 1000) == 16  # never below one step's keys
        assert queue_length(1000, 32, 50) == 32
        assert queue_length(0, 16, 1000) == 0  # no queue
    assert len(caplog.records) == 4 and "65536" not in caplog.text
    with pytest.raises(ValueError, match="queue_size"):
        queue_length(-1, 16, 1000)
    m = build(MoCo, context(steps_per_epoch=3), queue_size=65536)
    assert m.queue.shape == (3 * B, DIM)


def test_moco_state_dict_holds_the_queue() -> None:
    m = build(MoCo, queue_size=2 * B)
    m.loss(views())
    state = m.state_dict()
    assert torch.equal(state["queue"], m.queue) and int(state["queue_ptr"]) == B
    fresh = build(MoCo, queue_size=2 * B)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue, m.queue) and int(fresh.queue_ptr) == B


# -- EMA targets ---------------------------------------------------------------------------


def test_byol_target_moves_only_with_the_ema() -> None:
    m = build(BYOL)
    target0 = [p.clone() for p in m.target_backbone.parameters()]
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m.loss(views()).loss.backward()
    opt.step()
    online, target = list(m.backbone.parameters()), list(m.target_backbone.parameters())
    assert all(torch.equal(t, t0) for t, t0 in zip(target, target0, strict=True))
    gap = [(t - o).detach() for t, o in zip(target, online, strict=True)]
    assert sum(float(g.abs().sum()) for g in gap) > 0
    update_momentum(m.backbone, m.target_backbone, 0.9)
    # target' - online = tau * (target - online), tensor by tensor.
    for t, o, g in zip(target, online, gap, strict=True):
        torch.testing.assert_close(t - o, 0.9 * g, atol=1e-6, rtol=1e-5)


def test_momentum_schedules() -> None:
    byol = build(BYOL)
    for progress, want in [(0.0, 0.996), (0.5, 0.998), (1.0, 1.0)]:
        assert byol.momentum_at(progress) == pytest.approx(want, abs=1e-12)
    moco = build(MoCo, queue_size=B)
    assert [moco.momentum_at(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.999] * 3)
    tuned = build(MoCoTuned, queue_size=B)
    assert [tuned.momentum_at(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.99] * 3)
    assert len(byol.momentum_pairs()) == len(moco.momentum_pairs()) == 2


def test_moco_defaults_are_moco_v2s() -> None:
    """`moco` is MoCo v2 as published; `moco-tuned` keeps the small-data variant."""
    p = MoCoParams()
    assert (p.base_momentum, p.final_momentum, p.crop_min_scale) == (0.999, 0.999, 0.2)
    assert (p.temperature, p.queue_size, p.proj_hidden, p.proj_dim) == (0.2, 65536, 2048, 128)
    assert p.head_norm == "none" and p.shuffle_bn and not p.symmetric
    assert (MoCo.default_optimizer, MoCo.default_lr, MoCo.default_weight_decay) == (
        "sgd", 0.03, 1e-4,
    )  # fmt: skip
    m = MoCo(*build_backbone(BackboneSpec("tiny")), MoCoParams(proj_hidden=32), context())
    # no BatchNorm anywhere in MoCo v2's head: Linear-ReLU-Linear
    skip = (nn.Sequential, nn.Identity)  # "none" puts an Identity where the norm would be
    assert [type(x) for x in m.projector.modules() if not isinstance(x, skip)] == [
        nn.Linear, nn.ReLU, nn.Linear,
    ]  # fmt: skip
    spec = m.view_spec()
    assert spec.scale == (0.2, 1.0) and spec.jitter == (0.4, 0.4, 0.4, 0.1)
    t = MoCoTunedParams()
    assert (t.base_momentum, t.final_momentum, t.head_norm, t.crop_min_scale) == (
        0.99, 0.99, "batch", 0.08,
    )  # fmt: skip
    assert (MoCoTuned.default_optimizer, MoCoTuned.default_lr) == ("lars", 0.4)
    assert MoCoTuned.default_weight_decay == 1e-5
    assert get_method("moco-tuned") is MoCoTuned and MoCoTuned.Params is MoCoTunedParams
    tuned = build(MoCoTuned, context(image_size=96))
    assert tuned.view_spec().scale == (0.08, 1.0)
    assert tuned.view_spec().jitter == pytest.approx((0.8, 0.8, 0.8, 0.2))  # by size
    for cls in (MoCoParams, MoCoTunedParams):  # every setting says where it is from
        assert set(cls.SOURCES) == {f.name for f in dataclasses.fields(cls)}


# -- learning ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SimCLR, MoCo, BYOL])
def test_loss_falls_on_fixed_views(cls: type[Method]) -> None:
    m = build(cls, head_norm="batch")
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    v = views(size=8)  # small images: 30 steps in well under a second each method
    losses = []
    for _ in range(30):
        saved = {k: b.clone() for k, b in m.named_buffers() if k.startswith("queue")}
        loss = m.loss(v).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        for k, b in saved.items():  # the same negatives every step, as the views are fixed
            getattr(m, k).copy_(b)
    assert losses[-1] < 0.7 * losses[0], losses


def test_bad_temperature_is_rejected() -> None:
    with pytest.raises(ValueError, match="temperature"):
        build(SimCLR, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        build(MoCo, temperature=-1.0)
