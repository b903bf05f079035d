"""Barlow Twins, VICReg and SimSiam: their losses against closed forms and against
references written here with loops over samples and dimensions (not the vectorised code
in contrastkit.training.losses), float64 gradchecks, SimSiam's stop-gradient, and each method's
wiring (views, loss of its own networks, registry). Multi-process equality with one
process is in test_ddp_equivalence.py."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest
import torch

from contrastkit.training.augment import Augmenter, byol_views, simsiam_view
from contrastkit.training.data import Batch
from contrastkit.training.encoders.nets.backbones import BackboneSpec, build_backbone
from contrastkit.training.losses import barlow_twins_loss, simsiam_loss, vicreg_loss, vicreg_terms
from contrastkit.training.methods import Method, MethodContext, MomentumMethod, Views, get_method
from contrastkit.training.methods.barlow import BarlowTwins
from contrastkit.training.methods.simsiam import SimSiam
from contrastkit.training.methods.vicreg import VICReg

B, SIZE = 8, 16


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# Two centred, uncorrelated columns of unit (biased) variance over 4 samples.
ORTHO = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)


# ---------------------------------------------------------------- Barlow Twins


def _barlow_loops(z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float) -> float:
    """Standardise column by column with Python's statistics, then C_ij by double loop."""
    rows1, rows2 = z1.tolist(), z2.tolist()
    n, d = len(rows1), len(rows1[0])

    def standard(rows: list[list[float]]) -> list[list[float]]:
        cols = []
        for j in range(d):
            col = [r[j] for r in rows]
            mu = statistics.fmean(col)
            sd = math.sqrt(statistics.pvariance(col, mu) + eps)
            cols.append([(v - mu) / sd for v in col])
        return cols  # [d][n]

    a, b = standard(rows1), standard(rows2)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lambd * c**2
    return total


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_matches_loops(seed: int, lambd: float) -> None:
    z1, z2 = _rand(6, 4, seed=seed), _rand(6, 4, seed=seed + 10)
    got = barlow_twins_loss(z1, z2, lambd, eps=1e-5).item()
    assert got == pytest.approx(_barlow_loops(z1, z2, lambd, 1e-5), rel=1e-10)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_barlow_closed_form_on_uncorrelated_columns(sign: float) -> None:
    """z2 = +-z1 with uncorrelated unit-variance columns: C = +-I / (1 + eps), so the loss
    is D (1 -+ 1 / (1 + eps))^2 (D = 2), and no off-diagonal term."""
    eps = 1e-5
    expected = 2 * (1 - sign / (1 + eps)) ** 2
    got = barlow_twins_loss(ORTHO, sign * ORTHO, 0.3, eps).item()
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # Scaling and shifting columns changes nothing but eps's share of each variance:
    # a column scaled by s is divided by sqrt(s^2 + eps) = s sqrt(1 + eps / s^2).
    s1, s2 = 1 / math.sqrt(1 + eps / 9), 1 / math.sqrt(1 + eps / 0.25)
    got = barlow_twins_loss(3 * ORTHO + 7, sign * (0.5 * ORTHO - 2), 0.3, eps).item()
    assert got == pytest.approx(2 * (1 - sign * s1 * s2) ** 2, rel=1e-9, abs=1e-15)


def test_barlow_off_diagonal_counts_lambda_times_squared_correlations() -> None:
    """Both columns of each view identical: C is all ones (up to eps), so the loss is
    D (D - 1) lambd for the off-diagonal entries and ~0 on the diagonal."""
    col = ORTHO[:, :1]
    z = torch.cat([col, col, col], dim=1)  # D = 3, every pair of columns correlated 1
    got = barlow_twins_loss(z, z.clone(), 0.25, eps=1e-12).item()
    assert got == pytest.approx(3 * 2 * 0.25, rel=1e-9)


def test_barlow_gradcheck() -> None:
    z1 = _rand(5, 3, seed=2).requires_grad_()
    z2 = _rand(5, 3, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: barlow_twins_loss(a, b, 0.1), (z1, z2))


def test_barlow_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="lambd"):
        barlow_twins_loss(ORTHO, ORTHO, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins_loss(ORTHO[:1], ORTHO[:1])
    with pytest.raises(ValueError, match="differ in shape"):
        barlow_twins_loss(ORTHO, ORTHO[:, :1])


def test_barlow_runs_in_float32_for_bf16_inputs() -> None:
    z = _rand(8, 4).to(torch.bfloat16)
    assert barlow_twins_loss(z, z).dtype == torch.float32


# ---------------------------------------------------------------- VICReg


def _vicreg_loops(
    z1: torch.Tensor, z2: torch.Tensor, gamma: float, eps: float
) -> tuple[float, float, float]:
    """The paper's three terms from explicit sums (unbiased statistics, as the code)."""
    a, b = z1.tolist(), z2.tolist()
    n, d = len(a), len(a[0])
    inv = sum((a[k][j] - b[k][j]) ** 2 for k in range(n) for j in range(d)) / (n * d)
    var = cov = 0.0
    for rows in (a, b):
        cols = [[r[j] for r in rows] for j in range(d)]
        means = [sum(c) / n for c in cols]
        for j in range(d):
            std = math.sqrt(statistics.variance(cols[j]) + eps)
            var += max(0.0, gamma - std) / d / 2
        for i in range(d):
            for j in range(d):
                if i != j:
                    c = sum((cols[i][k] - means[i]) * (cols[j][k] - means[j]) for k in range(n))
                    cov += (c / (n - 1)) ** 2 / d
    return inv, var, cov


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scale", [0.3, 3.0])  # below and above the hinge at gamma = 1
def test_vicreg_terms_match_loops(seed: int, scale: float) -> None:
    z1, z2 = scale * _rand(7, 4, seed=seed), scale * _rand(7, 4, seed=seed + 10)
    got = [t.item() for t in vicreg_terms(z1, z2, 1.0, 1e-4)]
    assert got == pytest.approx(list(_vicreg_loops(z1, z2, 1.0, 1e-4)), rel=1e-10)


def test_vicreg_loss_weights_the_terms() -> None:
    z1, z2 = 0.5 * _rand(6, 3, seed=4), _rand(6, 3, seed=5)
    inv, var, cov = _vicreg_loops(z1, z2, 1.0, 1e-4)
    assert vicreg_loss(z1, z2).item() == pytest.approx(25 * inv + 25 * var + cov, rel=1e-10)
    got = vicreg_loss(z1, z2, sim_coeff=2.0, std_coeff=3.0, cov_coeff=5.0).item()
    assert got == pytest.approx(2 * inv + 3 * var + 5 * cov, rel=1e-10)


def test_vicreg_closed_forms() -> None:
    # Equal views, uncorrelated columns with std 2 > gamma: every term is 0.
    z = 2 * ORTHO * math.sqrt(3 / 4)  # unbiased std of +-c over 4 samples: c * sqrt(4/3)
    inv, var, cov = (t.item() for t in vicreg_terms(z, z.clone()))
    assert (inv, var, cov) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    # Collapse: every sample the same vector. std = sqrt(eps) in every dimension, so the
    # variance term is gamma - sqrt(eps); nothing varies, so no covariance either.
    const = torch.full((5, 3), 0.7, dtype=torch.float64)
    assert vicreg_loss(const, const.clone()).item() == pytest.approx(25 * (1 - 1e-2), rel=1e-12)
    # Invariance alone: a constant offset of 0.5 everywhere gives MSE 0.25.
    assert vicreg_terms(z, z + 0.5)[0].item() == pytest.approx(0.25, rel=1e-12)


def test_vicreg_gradcheck() -> None:
    z1 = (0.5 * _rand(5, 3, seed=6)).requires_grad_()
    z2 = (0.5 * _rand(5, 3, seed=7)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: vicreg_loss(a, b), (z1, z2))


def test_vicreg_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="gamma"):
        vicreg_terms(ORTHO, ORTHO, gamma=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_terms(ORTHO[:1], ORTHO[:1])


# ---------------------------------------------------------------- SimSiam


@pytest.mark.parametrize(("z_of_p", "expected"), [(2.0, -1.0), (-0.5, 1.0)])
def test_simsiam_identical_and_opposite(z_of_p: float, expected: float) -> None:
    p = _rand(6, 5)
    assert simsiam_loss(p, z_of_p * p).item() == pytest.approx(expected, abs=1e-12)


def test_simsiam_matches_loops() -> None:
    p, z = _rand(5, 4, seed=1), _rand(5, 4, seed=2)
    terms = []
    for a, b in zip(p.tolist(), z.tolist(), strict=True):
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        terms.append(-dot / math.hypot(*a) / math.hypot(*b))
    assert simsiam_loss(p, z).item() == pytest.approx(statistics.fmean(terms), rel=1e-12)


def test_simsiam_gradcheck_and_stop_gradient() -> None:
    p = _rand(4, 3, seed=3).requires_grad_()
    z = _rand(4, 3, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: simsiam_loss(a, z), (p,))
    (grad,) = torch.autograd.grad(simsiam_loss(p, z), [z], allow_unused=True)
    assert grad is None  # the target is detached inside the loss


# ---------------------------------------------------------------- the methods


def _ctx(image_size: int = SIZE) -> MethodContext:
    return MethodContext(torch.device("cpu"), image_size, 100, 4, B)


def _build(cls: type[Method], image_size: int = SIZE, **params: Any) -> Any:
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone(BackboneSpec("tiny"))
    small: dict[str, Any] = {"proj_hidden": 32, "proj_dim": 16, "head_norm": "layer"}
    if cls is SimSiam:
        small["pred_hidden"] = 8
    return cls(backbone, feat_dim, cls.Params(**(small | params)), _ctx(image_size))


def _views(seed: int = 0, size: int = SIZE) -> Views:
    g = torch.Generator().manual_seed(seed)
    return Views(crops=[torch.randn(B, 3, size, size, generator=g) for _ in range(2)])


CLASSES = [BarlowTwins, VICReg, SimSiam]


def test_registry_finds_the_three_methods() -> None:
    assert [get_method(n) for n in ("barlow", "vicreg", "simsiam")] == CLASSES


@pytest.mark.parametrize("cls", CLASSES)
def test_make_views_two_views_at_ctx_size(cls: type[Method]) -> None:
    m = _build(cls)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (B, 3, 20, 20), dtype=torch.uint8, generator=g)
    out = m.make_views(Batch(images, None, None, torch.arange(B)), Augmenter("cpu", seed=0))
    assert out.n_global == 2 and len(out.crops) == 2
    for crop in out.crops:
        assert crop.shape == (B, 3, SIZE, SIZE) and torch.isfinite(crop).all()
    assert (out.crops[0] - out.crops[1]).abs().amax(dim=(1, 2, 3)).min() > 1e-3


@pytest.mark.parametrize("size", [SIZE, 224])
def test_view_recipes_are_each_papers(size: int) -> None:
    """SimSiam: its paper's symmetric MoCo v2 recipe (no solarize) on both views; Barlow
    Twins and VICReg: BYOL's asymmetric pair, as their papers. `views=byol` restores
    SimSiam's earlier BYOL views (how older checkpoints resume)."""
    first, second = _build(SimSiam, size).view_pair()
    assert first == second == simsiam_view(size)
    assert first.solarize_p == 0.0 and first.jitter == (0.4, 0.4, 0.4, 0.1)
    assert _build(SimSiam, size, views="byol").view_pair() == byol_views(size)
    for cls in (BarlowTwins, VICReg):
        assert _build(cls, size).view_pair() == byol_views(size)
    with pytest.raises(ValueError, match="views must be one of simsiam, byol"):
        _build(SimSiam, views="simclr")


@pytest.mark.parametrize("head_norm", ["layer", "batch"])
def test_barlow_and_vicreg_losses_are_of_their_projections(head_norm: str) -> None:
    v = _views()
    bt = _build(BarlowTwins, head_norm=head_norm, lambd=0.02)
    out = bt.loss(v)
    with torch.no_grad():
        z1, z2 = bt.project(v.crops[0]), bt.project(v.crops[1])
    assert out.loss.item() == pytest.approx(_barlow_loops(z1.double(), z2.double(), 0.02, 1e-5),
                                            rel=1e-4)  # fmt: skip
    assert set(out.logs) == {"on_diag_mean"} and -1 <= out.logs["on_diag_mean"] <= 1
    vr = _build(VICReg, head_norm=head_norm, sim_coeff=2.0)
    out = vr.loss(v)
    with torch.no_grad():
        z1, z2 = vr.project(v.crops[0]), vr.project(v.crops[1])
    inv, var, cov = _vicreg_loops(z1.double(), z2.double(), 1.0, 1e-4)
    assert out.loss.item() == pytest.approx(2 * inv + 25 * var + cov, rel=1e-4)
    logs = {k: t.item() for k, t in out.logs.items()}
    assert logs == pytest.approx({"invariance": inv, "variance": var, "covariance": cov}, rel=1e-4)


def test_simsiam_loss_is_symmetric_negative_cosine() -> None:
    m = _build(SimSiam)
    v = _views()
    out = m.loss(v)
    with torch.no_grad():
        z1, z2 = m.project(v.crops[0]), m.project(v.crops[1])
        p1, p2 = m.predictor(z1), m.predictor(z2)
    cos = torch.nn.functional.cosine_similarity
    want = -0.5 * (cos(p1, z2).mean() + cos(p2, z1).mean())
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert -1 <= out.loss.item() <= 1 and "z_std" in out.logs


def test_simsiam_target_branch_gets_no_gradient() -> None:
    """The parameter gradients equal those of a loss whose targets z are constants from a
    separate no-grad forward: nothing flows back through the target branch. And a
    gradient through the targets would change them (else this test proves nothing)."""
    v = _views(seed=3)
    m = _build(SimSiam)
    m.loss(v).loss.backward()
    got = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    ref = _build(SimSiam)
    with torch.no_grad():
        t1, t2 = ref.project(v.crops[0]), ref.project(v.crops[1])
    cos = torch.nn.functional.cosine_similarity

    def negcos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -cos(a, b).mean()

    p1, p2 = ref.predictor(ref.project(v.crops[0])), ref.predictor(ref.project(v.crops[1]))
    (0.5 * (negcos(p1, t2) + negcos(p2, t1))).backward()
    want = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert sorted(got) == sorted(want)
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-7, msg=name)

    leaky = _build(SimSiam)  # the same loss without the stop-gradient
    z1, z2 = leaky.project(v.crops[0]), leaky.project(v.crops[1])
    (0.5 * (negcos(leaky.predictor(z1), z2) + negcos(leaky.predictor(z2), z1))).backward()
    bb = "backbone.body.0.weight"
    leaked = dict(leaky.named_parameters())[bb].grad
    assert leaked is not None and not torch.allclose(leaked, got[bb], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("cls", CLASSES)
def test_every_parameter_gets_a_finite_gradient(cls: type[Method]) -> None:
    m = _build(cls, head_norm="batch")
    m.loss(_views()).loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert not isinstance(m, MomentumMethod)  # none of the three has an EMA target


@pytest.mark.parametrize("cls", CLASSES)
def test_loss_falls_on_fixed_views(cls: type[Method]) -> None:
    m = _build(cls, head_norm="batch")
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    v = _views(size=8)
    losses = []
    for _ in range(30):
        loss = m.loss(v).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1 * abs(losses[0]), losses


def test_bad_params_are_rejected() -> None:
    with pytest.raises(ValueError, match="lambd"):
        _build(BarlowTwins, lambd=0.0)
    with pytest.raises(ValueError, match="std_coeff"):
        _build(VICReg, std_coeff=-1.0)
