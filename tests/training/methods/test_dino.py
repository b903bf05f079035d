"""DINO: the loss against an explicit loop over view pairs, its gradient, the teacher's
stop-gradient, the centre's update, the teacher-temperature schedule and the hooks."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from contrastkit.training.augment import Augmenter, dino_views, multicrop_views
from contrastkit.training.data import Batch
from contrastkit.training.encoders.nets.backbones import BackboneSpec, build_backbone
from contrastkit.training.losses import dino_loss
from contrastkit.training.methods import MethodContext, Views, get_method
from contrastkit.training.methods.dino import (
    DINO,
    DINOHead,
    DINOParams,
    teacher_temp_at,
    updated_center,
)
from contrastkit.training.momentum import update_momentum

B, SIZE, SMALL, K = 6, 16, 8, 12


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def context(steps_per_epoch: int = 4) -> MethodContext:
    return MethodContext(torch.device("cpu"), SIZE, 100, steps_per_epoch, B)


def build(ctx: MethodContext | None = None, **params: Any) -> DINO:
    """DINO over the tiny GroupNorm backbone, a small head and 2 local crops."""
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone(BackboneSpec("tiny"))
    defaults: dict[str, Any] = {"proj_hidden": 32, "proj_dim": 8, "out_dim": K,
                                "n_small_crops": 2, "small_size": SMALL}  # fmt: skip
    return DINO(backbone, feat_dim, DINOParams(**(defaults | params)), ctx or context())


def views(seed: int = 0, n_small: int = 2) -> Views:
    g = torch.Generator().manual_seed(seed)
    sizes = [SIZE, SIZE] + [SMALL] * n_small
    return Views(crops=[torch.randn(B, 3, s, s, generator=g) for s in sizes])


# ---------------------------------------------------------------- the loss


def _dino_loops(
    student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
    tt: float, ts: float,
) -> float:  # fmt: skip
    """Written out: explicit softmax and log-softmax per row, a loop over view pairs."""
    total, pairs = 0.0, 0
    c = center.reshape(-1).tolist()
    for i, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == i:
                continue
            pair = 0.0
            for row_t, row_s in zip(t.tolist(), s.tolist(), strict=True):
                e = [math.exp((x - ci) / tt) for x, ci in zip(row_t, c, strict=True)]
                q = [x / sum(e) for x in e]
                log_norm = math.log(sum(math.exp(x / ts) for x in row_s))
                log_p = [x / ts - log_norm for x in row_s]
                pair += -sum(qk * lk for qk, lk in zip(q, log_p, strict=True))
            total += pair / len(t.tolist())
            pairs += 1
    return total / pairs


@pytest.mark.parametrize(("n_views", "n_teacher"), [(2, 2), (4, 2), (3, 1)])
@pytest.mark.parametrize(("tt", "ts"), [(0.04, 0.1), (0.07, 0.2)])
def test_dino_loss_matches_loops(n_views: int, n_teacher: int, tt: float, ts: float) -> None:
    # logits of cosine size, as the head gives (larger ones overflow the loop's exp)
    student = [0.5 * _rand(5, K, seed=v) for v in range(n_views)]
    teacher = [0.5 * _rand(5, K, seed=10 + i) for i in range(n_teacher)]
    center = 0.1 * _rand(K, seed=99)
    got = dino_loss(student, teacher, center, tt, ts).item()
    assert got == pytest.approx(_dino_loops(student, teacher, center, tt, ts), rel=1e-10)
    # a [1, K] centre is the same centre
    assert dino_loss(student, teacher, center[None], tt, ts).item() == pytest.approx(got, rel=1e-14)


def test_dino_loss_uniform_targets_and_predictions_give_log_k() -> None:
    """Teacher rows equal to the centre -> uniform targets; constant student rows ->
    uniform predictions: every term is the cross-entropy of two uniforms, ln K."""
    t = _rand(1, K, seed=1).expand(4, K)
    s = torch.full((4, K), 0.3, dtype=torch.float64)
    loss = dino_loss([s, s, s], [t, t], t[0], 0.04)
    assert loss.item() == pytest.approx(math.log(K), rel=1e-12)


def test_dino_loss_one_hot_target_is_student_cross_entropy() -> None:
    """A very sharp teacher -> a one-hot target at its argmax: -log p_student[argmax]."""
    t = torch.zeros(1, K, dtype=torch.float64)
    t[0, 3] = 1.0
    s = _rand(1, K, seed=2)
    loss = dino_loss([s, s], [t, t], torch.zeros(K, dtype=torch.float64), 1e-3, 0.1)
    want = -torch.log_softmax(s[0] / 0.1, dim=0)[3].item()
    assert loss.item() == pytest.approx(want, rel=1e-9)


def test_dino_loss_gradcheck_and_no_teacher_gradient() -> None:
    student = [_rand(3, 5, seed=v).requires_grad_() for v in range(3)]
    teacher = [_rand(3, 5, seed=10 + i).requires_grad_() for i in range(2)]
    center = _rand(5, seed=20)

    def f(*s: torch.Tensor) -> torch.Tensor:
        return dino_loss(list(s), teacher, center, 0.07, 0.1)

    assert torch.autograd.gradcheck(f, tuple(student), eps=1e-6, atol=1e-8)
    dino_loss(student, teacher, center, 0.07, 0.1).backward()
    assert all(t.grad is None for t in teacher)  # the stop-gradient is inside the loss
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)


def test_dino_loss_rejects_bad_inputs() -> None:
    s, c = _rand(3, K), torch.zeros(K, dtype=torch.float64)
    with pytest.raises(ValueError, match="teacher_temp"):
        dino_loss([s, s], [s], c, 0.0)
    with pytest.raises(ValueError, match="student_temp"):
        dino_loss([s, s], [s], c, 0.04, -1.0)
    with pytest.raises(ValueError, match="teacher"):
        dino_loss([s], [s], c, 0.04)
    with pytest.raises(ValueError, match="must be"):
        dino_loss([s, _rand(3, K + 1)], [s], c, 0.04)
    with pytest.raises(ValueError, match="center"):
        dino_loss([s, s], [s], torch.zeros(K + 1), 0.04)


# ---------------------------------------------------------------- centre and temperature


def test_center_update_closed_form() -> None:
    """Rows of crop 1 all a, rows of crop 2 all b: the batch mean is (a + b) / 2."""
    a, b = _rand(K, seed=1), _rand(K, seed=2)
    center = _rand(K, seed=3)
    teacher = [a.expand(4, K), b.expand(4, K)]
    got = updated_center(center, teacher, 0.9)
    torch.testing.assert_close(got, 0.9 * center + 0.1 * (a + b) / 2, rtol=1e-14, atol=1e-14)
    # momentum 0: the batch mean itself, over every row of every global crop
    rows = [_rand(3, K, seed=4), _rand(3, K, seed=5)]
    mean = torch.cat(rows).mean(0)
    torch.testing.assert_close(updated_center(center, rows, 0.0), mean, rtol=1e-14, atol=1e-14)
    assert updated_center(center.float(), rows, 0.5).dtype == torch.float32  # centre's dtype


def test_method_moves_the_center_only_after_the_step() -> None:
    m = build().double()
    v = Views([c.double() for c in views().crops])
    m.center.copy_(_rand(K, seed=7))
    before = m.center.clone()
    teacher = m.teacher_logits(v.crops[:2])
    m.loss(v)
    assert torch.equal(m.center, before)  # a skipped (non-finite) step must not move it
    m.on_after_step(0)
    want = 0.9 * before + 0.1 * torch.cat(teacher).mean(0)
    torch.testing.assert_close(m.center, want, rtol=1e-12, atol=1e-12)


def _halves(v: Views) -> list[Views]:
    return [Views([c[rows] for c in v.crops]) for rows in (slice(0, B // 2), slice(B // 2, B))]


def test_center_under_gradient_accumulation_and_after_a_skipped_step() -> None:
    """As the engine drives it: zero_grad(set_to_none) then one forward + backward per
    micro-batch, then the hooks. Two half batches move the centre as the whole batch
    does (per-sample head: LayerNorm); a skipped step's outputs are forgotten."""
    v = views()
    whole = build(head_norm="layer")
    whole.loss(v)
    whole.on_after_step(0)
    assert not torch.equal(whole.center, torch.zeros(K))
    acc = build(head_norm="layer")
    acc.zero_grad(set_to_none=True)
    for part in _halves(v):
        acc.loss(part).loss.backward()
    acc.on_after_step(0)
    torch.testing.assert_close(acc.center, whole.center, rtol=1e-6, atol=1e-7)
    skipped = build(head_norm="layer")
    skipped.zero_grad(set_to_none=True)
    skipped.loss(views(seed=5)).loss.backward()  # non-finite, say: the engine skips it
    skipped.zero_grad(set_to_none=True)  # what the engine's skip does
    skipped.loss(v).loss.backward()
    skipped.on_after_step(0)
    torch.testing.assert_close(skipped.center, whole.center, rtol=1e-6, atol=1e-7)


def test_teacher_temperature_schedule() -> None:
    p = DINOParams(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=2)
    steps_per_epoch = 5  # warm-up: 10 steps
    assert teacher_temp_at(p, 0, steps_per_epoch) == pytest.approx(0.04, abs=1e-15)
    assert teacher_temp_at(p, 5, steps_per_epoch) == pytest.approx(0.055, abs=1e-15)  # mid
    assert teacher_temp_at(p, 9, steps_per_epoch) == pytest.approx(0.067, abs=1e-15)
    assert teacher_temp_at(p, 10, steps_per_epoch) == 0.07  # after the warm-up: constant
    assert teacher_temp_at(p, 1000, steps_per_epoch) == 0.07
    assert teacher_temp_at(DINOParams(teacher_temp=0.05), 0, 5) == 0.05  # no warm-up
    # the method follows the steps it has taken (and logs the value it used)
    m = build(context(steps_per_epoch=5), teacher_temp=0.07, warmup_teacher_temp_epochs=2)
    assert m.teacher_temp() == pytest.approx(0.04)
    for step in range(5):
        m.on_after_step(step)
    assert m.teacher_temp() == pytest.approx(0.055)
    assert m.loss(views()).logs["teacher_temp"].item() == pytest.approx(0.055)


# ---------------------------------------------------------------- the method


def test_registered_and_views_are_multi_crop() -> None:
    assert get_method("dino") is DINO
    m = build(n_small_crops=3)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (B, 3, 20, 20), dtype=torch.uint8, generator=g)
    out = m.make_views(Batch(images, None, None, torch.arange(B)), Augmenter("cpu", seed=0))
    assert out.n_global == 2
    assert [c.shape for c in out.crops] == [(B, 3, SIZE, SIZE)] * 2 + [(B, 3, SMALL, SMALL)] * 3


def test_views_are_dinos_own_and_swav_on_request() -> None:
    """Default: DataAugmentationDINO's recipe (asymmetric global crops); `views=swav`: the
    SwAV multi-crop that checkpoints from before the setting trained with."""
    assert build(n_small_crops=3).view_specs == dino_views(SIZE, 3, SMALL)
    assert build(n_small_crops=3, views="swav").view_specs == multicrop_views(SIZE, 3, SMALL)
    assert build(small_size=0).view_specs == dino_views(SIZE, 2)  # sides from image_size
    with pytest.raises(ValueError, match="views must be one of dino, swav"):
        build(views="byol")


def test_head_gives_cosines_and_ignores_last_layer_row_norms() -> None:
    torch.manual_seed(0)
    head = DINOHead(10, 16, 8, K)
    x = torch.randn(5, 10)
    out = head(x)
    assert out.shape == (5, K) and out.abs().max() <= 1 + 1e-6
    with torch.no_grad():
        head.last.weight.mul_(torch.rand(K, 1) * 5 + 0.1)  # weight norm: the gain is fixed
    torch.testing.assert_close(head(x), out)


def test_only_the_student_gets_gradients_and_the_teacher_starts_equal() -> None:
    m = build()
    for online, target in m.momentum_pairs():
        for a, b in zip(online.state_dict().values(), target.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    out = m.loss(views())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert 0 <= out.logs["teacher_entropy"].item() <= math.log(K) + 1e-5
    out.loss.backward()
    for module in (m.backbone, m.head):
        assert all(p.grad is not None for p in module.parameters())
        assert sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None) > 0
    for module in (m.teacher_backbone, m.teacher_head):
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    assert not m.center.requires_grad and "center" in dict(m.named_buffers())


def test_last_layer_is_frozen_for_the_first_epoch() -> None:
    m = build(context(steps_per_epoch=3))  # freeze_last_layer_epochs=1: steps 0, 1, 2
    for step, frozen in [(0, True), (2, True), (3, False)]:
        m.zero_grad(set_to_none=True)
        m.loss(views()).loss.backward()
        m.on_before_step(step)
        assert (m.head.last.weight.grad is None) == frozen, step
        assert m.head.mlp[0].weight.grad is not None  # the rest of the head still trains
    assert build(context(4), freeze_last_layer_epochs=0.5).freeze_last_layer_steps == 2


def test_ema_moves_the_teacher_towards_the_student() -> None:
    m = build()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    m.loss(views()).loss.backward()
    opt.step()
    assert m.momentum_at(0.0) == pytest.approx(0.996) and m.momentum_at(1.0) == 1.0
    assert isinstance(m.teacher_head, DINOHead)
    before = m.teacher_head.last.weight.clone()
    for online, target in m.momentum_pairs():
        update_momentum(online, target, m.momentum_at(0.0))
    want = 0.996 * before + 0.004 * m.head.last.weight.detach()
    torch.testing.assert_close(m.teacher_head.last.weight, want)


def test_state_dict_holds_center_and_step_counter() -> None:
    m = build()
    m.loss(views())
    for step in range(3):
        m.on_after_step(step)
    fresh = build()
    fresh.load_state_dict(m.state_dict())
    assert fresh.steps_done == 3 and torch.equal(fresh.center, m.center)
    assert not torch.equal(fresh.center, torch.zeros(K))


def test_bad_params_are_rejected() -> None:
    for bad in ({"teacher_temp": 0.0}, {"student_temp": -1.0}, {"center_momentum": 1.5},
                {"base_momentum": 1.0, "final_momentum": 0.9}, {"head_norm": "group"}):  # fmt: skip
        with pytest.raises(ValueError, match="dino"):
            build(**bad)
