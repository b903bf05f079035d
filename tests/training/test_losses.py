"""Each loss against a closed form and a loop-by-loop reference written independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.training.losses import (
    byol_loss,
    clip_loss,
    info_nce,
    nt_xent,
    siglip_loss,
    sinkhorn,
    swav_loss,
)
from tests.training.references import neg_log_softmax_at, nt_xent_reference


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_orthogonal_closed_form(t: float) -> None:
    n = 5
    z = torch.eye(n, 8, dtype=torch.float64) * torch.arange(1, n + 1).unsqueeze(1)  # any norm
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + (2 * n - 2)))
    assert nt_xent(z, z.clone(), t).item() == pytest.approx(expected, rel=1e-12)


def test_nt_xent_identical_inputs_give_log_2n_minus_1() -> None:
    n = 6
    z = torch.ones(n, 4, dtype=torch.float64)
    assert nt_xent(z, z, 0.3).item() == pytest.approx(math.log(2 * n - 1), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_nt_xent_matches_loops(seed: int) -> None:
    z1, z2 = _rand(7, 5, seed=seed), _rand(7, 5, seed=seed + 10)
    assert nt_xent(z1, z2, 0.2).item() == pytest.approx(nt_xent_reference(z1, z2, 0.2), rel=1e-10)
    # normalised inside: scale does not matter
    assert nt_xent(3 * z1, 0.5 * z2, 0.2).item() == pytest.approx(nt_xent(z1, z2, 0.2).item())


def test_nt_xent_single_pair_is_zero() -> None:
    z = _rand(1, 3)
    assert nt_xent(z, -z, 0.5).item() == pytest.approx(0.0, abs=1e-12)


def test_nt_xent_gradcheck() -> None:
    z1 = _rand(3, 4, seed=2).requires_grad_()
    z2 = _rand(3, 4, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z1, z2))


# ---------------------------------------------------------------- InfoNCE


def test_info_nce_with_queue_matches_loops() -> None:
    q = F.normalize(_rand(4, 6, seed=1), dim=1)
    k = F.normalize(_rand(4, 6, seed=2), dim=1)
    queue = F.normalize(_rand(9, 6, seed=3), dim=1)
    rows = []
    for i in range(4):
        row = [float(q[i] @ k[i])] + [float(q[i] @ queue[j]) for j in range(9)]
        rows.append([x / 0.2 for x in row])
    expected = F.cross_entropy(torch.tensor(rows, dtype=torch.float64), torch.zeros(4).long())
    assert info_nce(q, k, queue, 0.2).item() == pytest.approx(expected.item(), rel=1e-10)


def test_info_nce_in_batch_matches_loops() -> None:
    q, k = _rand(5, 3, seed=4), _rand(5, 3, seed=5)
    qn, kn = [_unit(v) for v in q.numpy()], [_unit(v) for v in k.numpy()]
    expected = np.mean(
        [neg_log_softmax_at([float(qn[i] @ kn[j]) / 0.1 for j in range(5)], i) for i in range(5)]
    )
    assert info_nce(q, k, None, 0.1).item() == pytest.approx(expected, rel=1e-10)


def test_info_nce_orthogonal_queue_closed_form() -> None:
    q = torch.eye(3, 8, dtype=torch.float64)
    queue = torch.eye(8, dtype=torch.float64)[3:]  # 5 negatives orthogonal to every q
    expected = -math.log(math.exp(1 / 0.2) / (math.exp(1 / 0.2) + 5))
    assert info_nce(q, q, queue, 0.2).item() == pytest.approx(expected, rel=1e-12)


def test_info_nce_queue_gets_no_gradient() -> None:
    q = _rand(2, 3).requires_grad_()
    queue = F.normalize(_rand(4, 3, seed=1), dim=1).requires_grad_()
    info_nce(q, _rand(2, 3, seed=2), queue).backward()
    assert q.grad is not None and queue.grad is None


# ---------------------------------------------------------------- BYOL


@pytest.mark.parametrize(("z_of_p", "expected"), [(1.0, 0.0), (-2.0, 4.0)])
def test_byol_identical_and_opposite(z_of_p: float, expected: float) -> None:
    p = _rand(6, 5)
    assert byol_loss(p, z_of_p * p).item() == pytest.approx(expected, abs=1e-12)


def test_byol_orthogonal_is_two_and_no_gradient_into_z() -> None:
    p = (torch.eye(4, dtype=torch.float64) * 3).requires_grad_()
    z = torch.eye(4, dtype=torch.float64).roll(1, dims=0).requires_grad_()
    loss = byol_loss(p, z)
    assert loss.item() == pytest.approx(2.0, abs=1e-12)
    loss.backward()
    assert z.grad is None and p.grad is not None and p.grad.abs().sum() > 0


def test_byol_matches_loops() -> None:
    p, z = _rand(5, 4, seed=1), _rand(5, 4, seed=2)
    expected = np.mean(
        [2 - 2 * float(_unit(a) @ _unit(b)) for a, b in zip(p.numpy(), z.numpy(), strict=True)]
    )
    assert byol_loss(p, z).item() == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- Sinkhorn


def _sinkhorn_numpy(scores: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """SwAV's published single-process algorithm, step by step."""
    q = np.exp(scores / eps).T  # [K, B]
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(axis=1, keepdims=True) / k
        q = q / q.sum(axis=0, keepdims=True) / b
    return (q * b).T


@pytest.mark.parametrize(("eps", "iters"), [(0.05, 3), (0.1, 1), (0.5, 10)])
def test_sinkhorn_matches_numpy_reference(eps: float, iters: int) -> None:
    scores = F.normalize(_rand(12, 7), dim=1)
    got = sinkhorn(scores, eps, iters)
    ref = _sinkhorn_numpy(scores.numpy(), eps, iters)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got.sum(dim=1).numpy(), np.ones(12), rtol=1e-12)


def test_sinkhorn_converges_to_equal_partition() -> None:
    b, k = 32, 8
    q = sinkhorn(F.normalize(_rand(b, k), dim=1), 0.2, 300)
    np.testing.assert_allclose(q.sum(dim=1).numpy(), np.ones(b), rtol=1e-12)
    np.testing.assert_allclose(q.sum(dim=0).numpy(), np.full(k, b / k), rtol=1e-6)


def test_sinkhorn_three_iterations_closer_to_uniform_than_softmax() -> None:
    b, k = 64, 10
    scores = F.normalize(_rand(b, k, seed=5), dim=1) + torch.linspace(0, 0.5, k)  # skewed
    soft = torch.softmax(scores / 0.05, dim=1).sum(dim=0)
    codes = sinkhorn(scores, 0.05, 3).sum(dim=0)
    assert (codes - b / k).abs().max() < 0.5 * (soft - b / k).abs().max()


def test_sinkhorn_no_grad_float32_and_safe_from_overflow() -> None:
    scores = (4 + torch.rand(16, 5, generator=torch.Generator().manual_seed(0))).requires_grad_()
    # exp(5 / 0.05) overflows float32: only the max shift keeps this finite
    q = sinkhorn(scores.bfloat16(), 0.05, 3)
    assert not q.requires_grad and q.dtype == torch.float32
    ref = _sinkhorn_numpy(scores.detach().bfloat16().double().numpy(), 0.05, 3)
    np.testing.assert_allclose(q.numpy(), ref, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- SwAV


def _swav_loops(scores: list[torch.Tensor], codes: list[torch.Tensor], t: float) -> float:
    losses = []
    for i, code in enumerate(codes):
        for v, s in enumerate(scores):
            if v == i:
                continue
            per_row = []
            for b in range(s.shape[0]):
                logits = [float(x) / t for x in s[b]]
                per_row.append(
                    sum(
                        float(code[b, c]) * neg_log_softmax_at(logits, c)
                        for c in range(len(logits))
                    )
                )
            losses.append(sum(per_row) / len(per_row))
    return sum(losses) / len(losses)


def test_swav_matches_loops() -> None:
    scores = [F.normalize(_rand(6, 4, seed=s), dim=1) for s in range(4)]  # 2 global + 2 small
    codes = [sinkhorn(s, 0.05, 3) for s in scores[:2]]
    expected = _swav_loops(scores, codes, 0.1)
    assert swav_loss(scores, codes, 0.1).item() == pytest.approx(expected, rel=1e-10)


def test_swav_uniform_scores_give_log_k() -> None:
    k = 7
    scores = [torch.zeros(5, k, dtype=torch.float64) for _ in range(3)]
    codes = [sinkhorn(_rand(5, k, seed=i), 0.05, 3) for i in range(2)]
    assert swav_loss(scores, codes).item() == pytest.approx(math.log(k), rel=1e-12)


def test_swav_codes_get_no_gradient() -> None:
    scores = [_rand(3, 4, seed=s).requires_grad_() for s in range(2)]
    codes = [torch.full((3, 4), 0.25, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    swav_loss(scores, codes).backward()
    assert all(c.grad is None for c in codes) and all(s.grad is not None for s in scores)


# ---------------------------------------------------------------- CLIP


def _clip_loops(
    image: torch.Tensor, text: torch.Tensor, scale: float, groups: list[int] | None = None
) -> float:
    """Both directions row by row. Row i's positives: i itself, and with `groups` every j
    of the same group; its term is the mean over them of -log softmax at j."""
    im, tx = [_unit(v) for v in image.numpy()], [_unit(v) for v in text.numpy()]
    n = len(im)
    group = groups if groups is not None else list(range(n))
    total = 0.0
    for i in range(n):
        positives = [j for j in range(n) if group[j] == group[i]]
        image_row = [scale * float(im[i] @ tx[k]) for k in range(n)]  # image i vs all texts
        text_row = [scale * float(tx[i] @ im[k]) for k in range(n)]  # text i vs all images
        for row in (image_row, text_row):
            total += sum(neg_log_softmax_at(row, j) for j in positives) / len(positives)
    return total / (2 * n)


def test_clip_matches_loops() -> None:
    image, text = _rand(6, 5, seed=1), _rand(6, 5, seed=2)
    got = clip_loss(image, text, torch.tensor(14.0, dtype=torch.float64))
    assert got.item() == pytest.approx(_clip_loops(image, text, 14.0), rel=1e-10)


def test_clip_aligned_orthonormal_pairs() -> None:
    n, s = 4, 100.0
    pairs = torch.eye(n, 6, dtype=torch.float64)
    got = clip_loss(pairs, 2 * pairs, torch.tensor([s], dtype=torch.float64)).item()
    assert got == pytest.approx(-math.log(math.exp(s) / (math.exp(s) + n - 1)), rel=1e-9)
    assert got < 1e-40


def test_clip_gradcheck() -> None:
    image = _rand(3, 4, seed=6).requires_grad_()
    text = _rand(3, 4, seed=7).requires_grad_()
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(clip_loss, (image, text, scale))


# ---------------------------------------------------------------- SigLIP
def _siglip_loops(
    image: torch.Tensor, text: torch.Tensor, t: float, b: float, groups: list[int] | None = None
) -> float:
    """The paper's formula with explicit loops over every (image, text) pair; with
    `groups`, a pair is labelled +1 when its image and text share a group."""
    im = [_unit(r) for r in image.numpy()]
    tx = [_unit(r) for r in text.numpy()]
    n = len(im)
    group = groups if groups is not None else list(range(n))
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if group[i] == group[j] else -1.0
            logit = t * float(im[i] @ tx[j]) + b
            total += math.log1p(math.exp(-z * logit))  # -log sigmoid(z * logit)
    return total / n


def test_siglip_matches_loops() -> None:
    image, text = _rand(6, 5, seed=11), _rand(6, 5, seed=12)
    t, b = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    got = siglip_loss(image, text, t, b).item()
    assert got == pytest.approx(_siglip_loops(image, text, 10.0, -10.0), rel=1e-10)


def test_siglip_aligned_orthonormal_pairs_closed_form() -> None:
    """Own pairs at similarity 1, others at 0: -log s(t + b) - (n - 1) log s(-b) per row."""
    n, t, b = 4, 10.0, -3.0
    pairs = torch.eye(n, 6, dtype=torch.float64)
    got = siglip_loss(pairs, 3 * pairs, torch.tensor(t, dtype=torch.float64),
                      torch.tensor([b], dtype=torch.float64)).item()  # fmt: skip
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert got == pytest.approx(-math.log(sig(t + b)) - (n - 1) * math.log(sig(-b)), rel=1e-12)


def test_siglip_gradcheck() -> None:
    image = _rand(3, 4, seed=13).requires_grad_()
    text = _rand(3, 4, seed=14).requires_grad_()
    t = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(siglip_loss, (image, text, t, b))


# ---------------------------------------------------------------- multi-positive targets
# Class-name captions repeat in a batch; `groups` marks the copies, which become positives.
GROUPS = [0, 1, 0, 2, 1, 0, 3]  # captions 0, 2, 5 identical; 1 and 4 identical


def _t(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _with_copied_captions(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and texts [7, 5] whose texts are equal within each GROUPS group, as
    identical captions give identical text embeddings."""
    image, text = _rand(len(GROUPS), 5, seed=seed), _rand(len(GROUPS), 5, seed=seed + 1)
    first = {g: i for i, g in reversed(list(enumerate(GROUPS)))}
    return image, text[[first[g] for g in GROUPS]]


def _features(seed: int, copied: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Copied: identical captions (labels' same caption); else distinct captions of one
    label (e.g. other templates), whose texts differ though their groups match."""
    if copied:
        return _with_copied_captions(seed)
    return _rand(len(GROUPS), 5, seed=seed), _rand(len(GROUPS), 5, seed=seed + 1)


@pytest.mark.parametrize("copied", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_clip_multi_positive_matches_loops(seed: int, copied: bool) -> None:
    image, text = _features(seed, copied)
    got = clip_loss(image, text, _t(9.0), torch.tensor(GROUPS)).item()
    assert got == pytest.approx(_clip_loops(image, text, 9.0, GROUPS), rel=1e-10)
    if not copied:  # (with exact copies the softmax value happens to equal the plain one)
        assert got != pytest.approx(_clip_loops(image, text, 9.0), rel=1e-3)


@pytest.mark.parametrize("copied", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_siglip_multi_positive_matches_loops(seed: int, copied: bool) -> None:
    image, text = _features(seed, copied)
    got = siglip_loss(image, text, _t(10.0), _t(-3.0), torch.tensor(GROUPS)).item()
    assert got == pytest.approx(_siglip_loops(image, text, 10.0, -3.0, GROUPS), rel=1e-10)
    assert got != pytest.approx(_siglip_loops(image, text, 10.0, -3.0), rel=1e-3)


def test_multi_positive_without_repeats_is_the_plain_loss() -> None:
    """Distinct groups (any ids, any order) leave only the diagonal positive."""
    image, text = _rand(6, 5, seed=21), _rand(6, 5, seed=22)
    groups = torch.tensor([7, 3, 11, 0, 5, 2])
    plain = clip_loss(image, text, _t(14.0)).item()
    assert clip_loss(image, text, _t(14.0), groups).item() == pytest.approx(plain, rel=1e-12)
    plain = siglip_loss(image, text, _t(10.0), _t(-10.0)).item()
    multi = siglip_loss(image, text, _t(10.0), _t(-10.0), groups).item()
    assert multi == pytest.approx(plain, rel=1e-12)


def _text_grad(
    loss: str, image: torch.Tensor, text: torch.Tensor, groups: torch.Tensor | None
) -> torch.Tensor:
    """d loss / d text [n, d] (CLIP at scale 1, SigLIP at t 10, b -3)."""
    text = text.clone().requires_grad_()
    if loss == "clip":
        clip_loss(image, text, _t(1.0), groups).backward()
    else:
        siglip_loss(image, text, _t(10.0), _t(-3.0), groups).backward()
    assert text.grad is not None
    return text.grad


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_identical_captions_get_identical_gradients(loss: str) -> None:
    """Texts 0, 2 and 5 are copies: with their copies as positives every copy sees the same
    targets, so a step moves them alike and never pushes them apart; the plain loss does."""
    image, text = _with_copied_captions(3)
    grad = _text_grad(loss, image, text, torch.tensor(GROUPS))
    torch.testing.assert_close(grad[0], grad[2], rtol=0, atol=1e-12)
    torch.testing.assert_close(grad[0], grad[5], rtol=0, atol=1e-12)
    torch.testing.assert_close(grad[1], grad[4], rtol=0, atol=1e-12)
    plain = _text_grad(loss, image, text, None)
    assert float((plain[0] - plain[2]).norm()) > 1e-3


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_copy_of_own_caption_is_pulled_toward_the_image(loss: str) -> None:
    """Only image 0 non-zero (a zero image adds no text gradient): text 2, a copy of text 0,
    now moves toward image 0 under gradient descent; the plain loss pushes it away."""
    image, text = _with_copied_captions(4)
    image = torch.cat([image[:1], torch.zeros_like(image[1:])])
    toward = F.normalize(image[0], dim=0)
    multi = _text_grad(loss, image, text, torch.tensor(GROUPS))
    plain = _text_grad(loss, image, text, None)
    assert float(-multi[2] @ toward) > 1e-4
    assert float(-plain[2] @ toward) < -1e-4


def test_multi_positive_gradcheck() -> None:
    image = _rand(4, 3, seed=31).requires_grad_()
    text = _rand(4, 3, seed=32).requires_grad_()
    t = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([0, 1, 0, 1])
    assert torch.autograd.gradcheck(lambda x, y, s: clip_loss(x, y, s, groups), (image, text, t))
    assert torch.autograd.gradcheck(
        lambda x, y, s, c: siglip_loss(x, y, s, c, groups), (image, text, t, b)
    )


def test_bad_groups_shape_raises() -> None:
    a = _rand(4, 3)
    with pytest.raises(ValueError, match="groups"):
        clip_loss(a, a, _t(1.0), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="groups"):
        siglip_loss(a, a, _t(1.0), _t(0.0), torch.zeros(4, 1, dtype=torch.long))


# ---------------------------------------------------------------- input checks


@pytest.mark.parametrize("t", [0.0, -0.1, math.nan, math.inf])
def test_bad_temperature_raises(t: float) -> None:
    z = _rand(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z, z, t)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(z, z, None, t)
    with pytest.raises(ValueError, match="temperature"):
        swav_loss([z, z], [z], t)


def test_bad_sinkhorn_arguments_raise() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(_rand(2, 3), 0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn(_rand(2, 3), 0.05, 0)
    with pytest.raises(ValueError, match="scores"):
        sinkhorn(_rand(3), 0.05)


def test_shape_mismatches_raise() -> None:
    a, b = _rand(4, 3), _rand(5, 3)
    one = torch.tensor(1.0)
    for call in (
        lambda: nt_xent(a, b),
        lambda: info_nce(a, b, None),
        lambda: info_nce(a, a, _rand(6, 2)),
        lambda: byol_loss(a, b),
        lambda: clip_loss(a, b, one),
        lambda: clip_loss(a, a, torch.ones(2)),
        lambda: nt_xent(_rand(3), _rand(3)),
        lambda: nt_xent(_rand(0, 3), _rand(0, 3)),
        lambda: swav_loss([a, b], [a]),
        lambda: swav_loss([a], [a]),
        lambda: swav_loss([a, a], [a, a, a]),
    ):
        with pytest.raises(ValueError):
            call()


def test_losses_under_bf16_autocast_stay_close_to_float32() -> None:
    """The engine runs losses under autocast: bf16 matmuls must not break masking or CE."""
    a, b = _rand(16, 32, seed=1).float(), _rand(16, 32, seed=2).float()
    queue = F.normalize(_rand(64, 32, seed=3).float(), dim=1)
    scale = torch.tensor(10.0)
    calls = {
        "nt_xent": lambda: nt_xent(a, b, 0.5),
        "info_nce": lambda: info_nce(a, b, queue, 0.2),
        "clip": lambda: clip_loss(a, b, scale),
        "clip_multi": lambda: clip_loss(a, b, scale, torch.arange(16) % 5),
        "siglip_multi": lambda: siglip_loss(a, b, scale, -scale, torch.arange(16) % 5),
        "swav": lambda: swav_loss([a[:, :8], b[:, :8]], [sinkhorn(a[:, :8]), sinkhorn(b[:, :8])]),
    }
    for name, call in calls.items():
        exact = call()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = call()
        assert torch.isfinite(low), name
        assert low.float().item() == pytest.approx(exact.item(), rel=0.05), name
