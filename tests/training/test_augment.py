"""Statistics and reference checks for the batched augmentations (training/augment.py).

References are written differently from the code under test: torchvision's own per-image
functions in Python loops, pooling/interpolation closed forms, and per-channel loops.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from contrastkit.training.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmenter,
    ViewSpec,
    byol_views,
    color_jitter,
    dino_views,
    gaussian_blur,
    jitter_strength,
    moco_v2_view,
    multicrop_views,
    sample_boxes,
    simclr_view,
    simsiam_view,
    small_crop_side,
)
from tests.helpers import timing_scale

ZERO = (0.0, 0.0, 0.0)
ONE = (1.0, 1.0, 1.0)


def plain(size: int, **changes: Any) -> ViewSpec:
    """A view that only resizes the whole (square) image, with ``changes`` switched on."""
    base = ViewSpec(size, scale=(1, 1), ratio=(1, 1), hflip_p=0.0, jitter_p=0.0, gray_p=0.0)
    return replace(base, **changes)


def raw(aug_seed: int = 0) -> Augmenter:
    """An Augmenter whose output is in [0, 1] (mean 0, std 1), so colours can be read back."""
    return Augmenter("cpu", seed=aug_seed, mean=ZERO, std=ONE)


def colour_batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """n copies of one random colour image, uint8 [n,3,size,size]."""
    g = torch.Generator().manual_seed(seed)
    one = torch.randint(0, 256, (1, 3, size, size), generator=g, dtype=torch.uint8)
    return one.expand(n, -1, -1, -1).contiguous()


def test_box_statistics_and_bounds() -> None:
    g = torch.Generator().manual_seed(0)
    boxes = sample_boxes(10_000, 256, 256, (0.08, 1.0), (3 / 4, 4 / 3), g)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert torch.equal(boxes, boxes.round())  # whole pixels, as torchvision
    assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= 256 and boxes[:, 3].max() <= 256
    frac, aspect = (w * h / 256**2), w / h
    # sides are rounded to pixels: allow a pixel's worth of slack on ~72 px sides
    assert frac.min() >= 0.08 * (1 - 0.03) and frac.max() <= 1.0
    assert aspect.min() >= 0.75 * (1 - 0.03) and aspect.max() <= 4 / 3 * (1 + 0.03)
    assert frac.min() < 0.085 and frac.max() > 0.97  # the whole range is reached
    assert aspect.min() < 0.76 and aspect.max() > 1.32
    # offsets spread over every admissible position: mean centre near the image centre
    centre = (boxes[:, 0] + boxes[:, 2]) / 2
    assert abs(centre.mean().item() - 128) < 2


def test_boxes_follow_torchvision_distribution() -> None:
    """Two-sample KS distance against torchvision's own per-image loop (non-square image)."""
    height, width, scale, ratio = 30, 48, (0.08, 1.0), (3 / 4, 4 / 3)
    g = torch.Generator().manual_seed(1)
    ours = sample_boxes(10_000, height, width, scale, ratio, g)
    torch.manual_seed(1)
    img = torch.zeros(1, height, width)
    ref = torch.tensor([RandomResizedCrop.get_params(img, scale, ratio) for _ in range(4000)])
    ref_w, ref_h = ref[:, 3].float(), ref[:, 2].float()  # (top, left, h, w)
    for a, b in [
        (ours[:, 2] - ours[:, 0], ref_w),
        (ours[:, 3] - ours[:, 1], ref_h),
        (ours[:, 0], ref[:, 1].float()),
    ]:
        assert ks_distance(a, b) < 0.04


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    grid = torch.cat([a, b]).unique()
    cdf_a = torch.searchsorted(a.sort().values, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b.sort().values, grid, right=True) / len(b)
    return (cdf_a - cdf_b).abs().max().item()


def test_box_fallback_is_the_centre_crop() -> None:
    # a square crop of >= 90% of a 64x32 image never fits: torchvision falls back to the
    # centre crop cut to the nearest admissible aspect (1:1 here)
    g = torch.Generator().manual_seed(0)
    boxes = sample_boxes(50, 64, 32, (0.9, 1.0), (1.0, 1.0), g)
    assert torch.equal(boxes, torch.tensor([[0.0, 16.0, 32.0, 48.0]]).expand(50, 4))


def test_flip_rate_and_flip_is_a_mirror() -> None:
    img = torch.zeros(4000, 3, 8, 8, dtype=torch.uint8)
    img[..., 4:] = 255  # dark left half, bright right half
    out = raw(0)(img, plain(8, hflip_p=0.5))
    flipped = out[..., :4].mean(dim=(1, 2, 3)) > out[..., 4:].mean(dim=(1, 2, 3))
    assert abs(flipped.float().mean().item() - 0.5) < 0.03
    base = img.float() / 255
    assert torch.equal(out[flipped], base[flipped].flip(-1))
    assert torch.equal(out[~flipped], base[~flipped])


def test_brightness_factor_range_on_grey() -> None:
    grey = torch.full((2000, 3, 8, 8), 100, dtype=torch.uint8)
    spec = plain(8, jitter_p=1.0)
    out = raw(1)(grey, spec)
    # contrast, saturation and hue do nothing to a flat grey image: only brightness is left
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out), atol=1e-6)
    factor = out[:, 0, 0, 0] / (100 / 255)
    assert factor.min() >= 0.6 - 1e-4 and factor.max() <= 1.4 + 1e-4
    assert factor.min() < 0.62 and factor.max() > 1.38
    counts = torch.histc(factor, bins=4, min=0.6, max=1.4) / len(factor)
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.04)  # uniform


def test_jitter_probability() -> None:
    img = colour_batch(2000, 8)
    out = raw(2)(img, plain(8, jitter_p=0.8))
    diff = (out - img.float() / 255).abs().amax(dim=(1, 2, 3))
    changed = diff > 1e-3
    assert abs(changed.float().mean().item() - 0.8) < 0.03
    assert diff[~changed].max() < 1e-6  # the others are untouched, not just nearly


def test_color_jitter_matches_torchvision_per_image() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 10, 12, generator=g)
    factors = 0.6 + 0.8 * torch.rand(6, 3, generator=g)
    hue = 0.2 * torch.rand(6, generator=g) - 0.1
    ours = color_jitter(x, factors, hue)
    for i in range(6):
        ref = TF.adjust_brightness(x[i], factors[i, 0].item())
        ref = TF.adjust_contrast(ref, factors[i, 1].item())
        ref = TF.adjust_saturation(ref, factors[i, 2].item())
        ref = TF.adjust_hue(ref, hue[i].item())
        # torchvision's luma weights are 0.2989/0.587/0.114 (ours 0.299): ~1e-4 apart
        assert torch.allclose(ours[i], ref, atol=2e-3), i


def test_grayscale_rate_and_luma() -> None:
    img = colour_batch(2000, 6)
    out = raw(4)(img, plain(6, gray_p=0.2))
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert abs(gray.float().mean().item() - 0.2) < 0.03
    pixels = img[0].permute(1, 2, 0).double().numpy() / 255
    luma = pixels @ np.array([0.299, 0.587, 0.114])
    assert np.allclose(out[gray][:, 0].numpy(), luma[None], atol=1e-6)


def test_solarize_rate_and_mapping() -> None:
    ramp = torch.arange(64, dtype=torch.uint8).mul(4).view(1, 1, 8, 8).expand(2000, 3, 8, 8)
    out = raw(5)(ramp.contiguous(), plain(8, solarize_p=0.3))
    x = ramp.float() / 255
    solar = torch.where(x >= 0.5, 1 - x, x)
    hit = (out - solar).abs().amax(dim=(1, 2, 3)) < 1e-6
    miss = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert torch.equal(hit, ~miss)  # every image is exactly one of the two
    assert abs(hit.float().mean().item() - 0.3) < 0.03


def test_blur_removes_high_frequencies() -> None:
    board = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2 * 255).to(torch.uint8)
    img = board.expand(400, 3, 64, 64).contiguous()
    spec = plain(64, blur_p=0.5, blur_sigma=(1.0, 2.0))
    out = raw(6)(img, spec)
    energy = out.diff(dim=-1).pow(2).mean(dim=(1, 2, 3))  # neighbour differences
    sharp = (img.float() / 255).diff(dim=-1).pow(2).mean()
    blurred = energy < 0.05 * sharp
    assert torch.equal(blurred, energy < 0.99 * sharp)  # blurred or untouched, nothing between
    assert abs(blurred.float().mean().item() - 0.5) < 0.06


def test_gaussian_blur_matches_torchvision_per_image() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.rand(5, 3, 20, 17, generator=g)
    sigma = 0.1 + 1.9 * torch.rand(5, generator=g)
    ours = gaussian_blur(x, sigma, 7)
    for i in range(5):
        ref = TF.gaussian_blur(x[i], [7, 7], [sigma[i].item()] * 2)
        assert torch.allclose(ours[i], ref, atol=1e-5), i


def test_identity_view_normalisation() -> None:
    img = torch.randint(0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(8))
    img = img.to(torch.uint8)
    out = Augmenter("cpu")(img, plain(16))
    assert out.dtype == torch.float32 and out.is_contiguous()
    for c in range(3):
        ref = (img[:, c].double() / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(out[:, c].double(), ref, atol=1e-5)


def test_resampling_matches_interpolate_and_area_average() -> None:
    g = torch.Generator().manual_seed(9)
    img = torch.randint(0, 256, (3, 3, 28, 28), generator=g).to(torch.uint8)
    up = raw()(img, plain(32))  # 28 -> 32: plain bilinear, half-pixel centres
    ref = F.interpolate(img.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(up, ref, atol=1e-5)
    big = torch.randint(0, 256, (3, 3, 64, 64), generator=g).to(torch.uint8)
    down = raw()(big, plain(16))  # 64 -> 16: mean of each 4x4 block
    assert torch.allclose(down, F.avg_pool2d(big.float() / 255, 4), atol=1e-5)


def test_state_dict_round_trip_replays_views() -> None:
    img = colour_batch(16, 12)
    spec = ViewSpec(10, blur_p=0.5, solarize_p=0.5)
    aug = Augmenter("cpu", seed=3)
    first = aug(img, spec)
    state = {k: v.clone() for k, v in aug.state_dict().items()}
    second = aug(img, spec)
    aug.load_state_dict(state)
    assert torch.equal(aug(img, spec), second)
    fresh = Augmenter("cpu", seed=3)
    assert torch.equal(fresh(img, spec), first)
    assert not torch.allclose(Augmenter("cpu", seed=4)(img, spec), first)
    assert not torch.allclose(first, second)


def test_single_channel_input_equals_repeated_rgb() -> None:
    g = torch.Generator().manual_seed(10)
    gray = torch.randint(0, 256, (64, 1, 28, 28), generator=g).to(torch.uint8)
    spec = ViewSpec(32, blur_p=0.5, solarize_p=0.5)
    one = Augmenter("cpu", seed=5)(gray, spec)
    three = Augmenter("cpu", seed=5)(gray.repeat(1, 3, 1, 1), spec)
    assert one.shape == (64, 3, 32, 32) and torch.allclose(one, three, atol=1e-6)


def test_bad_input_is_rejected() -> None:
    aug = Augmenter("cpu")
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 3, 8, 8), ViewSpec(8))
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 2, 8, 8, dtype=torch.uint8), ViewSpec(8))


def test_eval_view_is_deterministic_resize() -> None:
    g = torch.Generator().manual_seed(11)
    img = torch.randint(0, 256, (4, 1, 40, 30), generator=g).to(torch.uint8)
    aug = Augmenter("cpu", mean=ZERO, std=ONE)
    state = aug.state_dict()["rng"].clone()
    out = aug.eval_view(img, 24)
    assert torch.equal(aug.state_dict()["rng"], state)  # draws nothing
    assert torch.equal(out, aug.eval_view(img, 24))
    ref = TF.resize(img.float() / 255, [24, 24], antialias=True)  # the PIL-like path
    assert torch.allclose(out, ref.expand(-1, 3, -1, -1), atol=1e-5)


def test_presets() -> None:
    assert simclr_view(32).blur_p == 0.0 and simclr_view(96).blur_p == 0.5
    one, two = byol_views(224)
    assert (one.blur_p, one.solarize_p, two.blur_p, two.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    assert [v.blur_p for v in byol_views(32)] == [0.0, 0.0]
    views = multicrop_views(224)
    assert [v.size for v in views] == [224, 224, 96, 96, 96, 96]
    assert [v.scale for v in views] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 4
    assert [v.size for v in multicrop_views(32, n_small=2)] == [32, 32, 14, 14]
    assert multicrop_views(8)[-1].size == 8 and multicrop_views(64, small_size=20)[-1].size == 20


def test_simsiam_view_is_the_papers_moco_v2_recipe() -> None:
    """Chen & He 2021 use MoCo v2's augmentation on both views: crop 0.2-1, jitter
    0.4/0.4/0.4/0.1 p 0.8, grayscale 0.2, blur 0.5, flip 0.5, no solarize, at every size
    (blur only from 64 px)."""
    for size in (32, 64, 96, 224):
        spec = simsiam_view(size)
        assert spec == moco_v2_view(size)
        assert (spec.scale, spec.jitter, spec.jitter_p) == ((0.2, 1.0), (0.4, 0.4, 0.4, 0.1), 0.8)
        assert (spec.gray_p, spec.hflip_p, spec.solarize_p) == (0.2, 0.5, 0.0)
        assert spec.blur_p == (0.5 if size >= 64 else 0.0) and spec.blur_sigma == (0.1, 2.0)
        assert spec.jitter_strength is None  # the paper's own jitter, not SimCLR's size rule


def test_dino_views_are_dinos_own_recipe() -> None:
    """DataAugmentationDINO: BYOL's jitter on every crop; blur 1.0 / 0.1 on the global
    crops, solarize 0.2 on the second only, blur 0.5 on the local crops; ResNet scales."""
    views = dino_views(224, n_small=3)
    assert [v.size for v in views] == [224, 224, 96, 96, 96]
    assert [v.scale for v in views] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 3
    assert [(v.blur_p, v.solarize_p) for v in views] == [(1.0, 0.0), (0.1, 0.2)] + [(0.5, 0.0)] * 3
    for v in views:
        assert (v.jitter, v.jitter_p, v.gray_p, v.hflip_p) == ((0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 0.5)
        assert v.jitter_strength is None and v.blur_sigma == (0.1, 2.0)
    # the blur rule by crop side: none on CIFAR-sized crops, nor on 55-px local crops of 128
    assert [(v.blur_p, v.solarize_p) for v in dino_views(32, 1)] == [(0, 0), (0, 0.2), (0, 0)]
    assert [v.blur_p for v in dino_views(128, 1)] == [1.0, 0.1, 0.0]
    assert [v.size for v in dino_views(32, 2)] == [32, 32, 14, 14]
    assert dino_views(64, 1, small_size=20)[-1].size == 20 == small_crop_side(64, 20)
    assert len(dino_views(32, 0)) == 2


def test_colour_jitter_follows_the_image_size() -> None:
    """SimCLR's strength s: 1.0 (0.8/0.8/0.8/0.2) from 96 px, 0.5 (0.4/0.4/0.4/0.1) below;
    SwAV's crops follow the global size; MoCo v2 and BYOL keep their papers' values."""
    imagenet, cifar = (0.8, 0.8, 0.8, 0.2), (0.4, 0.4, 0.4, 0.1)
    assert [jitter_strength(s) for s in (32, 64, 95, 96, 224)] == [0.5, 0.5, 0.5, 1.0, 1.0]
    assert simclr_view(224).jitter == pytest.approx(imagenet)
    assert simclr_view(96).jitter == pytest.approx(imagenet)
    assert simclr_view(32).jitter == pytest.approx(cifar)
    for size, want in ((224, imagenet), (32, cifar)):
        views = multicrop_views(size)  # the 96 px small crops of 224 keep the global's s
        assert all(v.jitter == pytest.approx(want) for v in views)
        assert all((v.jitter_p, v.gray_p) == (0.8, 0.2) for v in views)
        assert moco_v2_view(size).jitter == cifar
        assert [v.jitter for v in byol_views(size)] == [(0.4, 0.4, 0.2, 0.1)] * 2
    v2 = moco_v2_view(224)
    assert (v2.scale, v2.blur_p, v2.jitter_p, v2.gray_p) == ((0.2, 1.0), 0.5, 0.8, 0.2)
    assert moco_v2_view(32).blur_p == 0.0 and moco_v2_view(32, 0.08).scale == (0.08, 1.0)


def test_strong_jitter_spreads_colours_more() -> None:
    """The 224-px recipe's jitter really is stronger: brightness factors span [0.2, 1.8]
    rather than [0.6, 1.4] on a mid-grey image (only brightness moves a grey image)."""
    grey = torch.full((4000, 3, 8, 8), 128, dtype=torch.uint8)
    spreads = []
    for strength in (0.5, 1.0):
        jitter = (0.8 * strength, 0.0, 0.0, 0.0)
        out = raw()(grey, plain(8, jitter=jitter, jitter_p=1.0))
        factor = out.mean(dim=(1, 2, 3)) / (128 / 255)
        assert factor.min() >= 1 - 0.8 * strength - 1e-3
        assert factor.max() <= min(1 + 0.8 * strength, 255 / 128) + 1e-3
        spreads.append(float(factor.std()))
    assert spreads[1] > 1.6 * spreads[0]


def test_augmenter_jitter_strength_replaces_only_size_ruled_jitter() -> None:
    """A run's jitter_strength replaces s in SimCLR-rule views (all SwAV crops too) and
    leaves MoCo v2's and BYOL's own jitter alone; s = 0.5 at 224 px draws exactly the
    views of a spec written with 0.4/0.4/0.4/0.1 (how checkpoints from before the rule
    resume unchanged)."""
    img = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    old = replace(simclr_view(224), jitter=(0.4, 0.4, 0.4, 0.1), jitter_strength=None)
    forced = Augmenter("cpu", seed=3, jitter_strength=0.5)(img, simclr_view(224))
    assert torch.equal(forced, Augmenter("cpu", seed=3)(img, old))
    assert not torch.equal(forced, Augmenter("cpu", seed=3)(img, simclr_view(224)))
    own = (moco_v2_view(224), simsiam_view(224), *byol_views(224), *dino_views(224, 1))
    for spec in own:  # the papers' own jitter stays
        a = Augmenter("cpu", seed=4, jitter_strength=1.0)(img, spec)
        assert torch.equal(a, Augmenter("cpu", seed=4)(img, spec))
    assert all(v.jitter_strength == 1.0 for v in multicrop_views(224))
    assert simclr_view(32).jitter_strength == 0.5 and moco_v2_view(32).jitter_strength is None


@pytest.mark.parametrize(
    "bad",
    [
        {"size": 0},
        {"scale": (0.0, 1.0)},
        {"ratio": (2.0, 1.0)},
        {"gray_p": 1.5},
        {"jitter": (0.4, 0.4, 0.4, 0.6)},
        {"blur_sigma": (0.0, 1.0)},
    ],
)
def test_view_spec_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ViewSpec(**{"size": 8, **bad})  # type: ignore[arg-type]


@pytest.mark.timing
def test_cpu_throughput_is_reasonable() -> None:
    """256 SimCLR views of 32 px in well under 2 s (x CONTRASTIVE_TIMING_SCALE) on CPU:
    about 15 ms on 2 quiet cores; a slip back to per-image Python loops takes seconds."""
    img = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    aug, spec = Augmenter("cpu"), simclr_view(32)
    aug(img, spec)  # warm-up
    start = time.perf_counter()
    aug(img, spec)
    took = time.perf_counter() - start
    assert took < 2.0 * timing_scale(), f"{took:.2f} s for 256 views"


@pytest.mark.gpu
def test_cuda_views_and_resume() -> None:
    img = torch.randint(0, 256, (512, 1, 28, 28), dtype=torch.uint8, device="cuda")
    aug = Augmenter(torch.device("cuda"), seed=0)
    spec = ViewSpec(32, blur_p=0.5, solarize_p=0.2)
    state = aug.state_dict()
    first = aug(img, spec)
    assert first.device.type == "cuda" and first.shape == (512, 3, 32, 32)
    aug.load_state_dict(state)
    assert torch.equal(aug(img, spec), first)
    boxes = sample_boxes(10_000, 64, 64, (0.08, 1.0), (0.75, 4 / 3), aug.generator)
    frac = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 64**2).cpu()
    assert frac.min() >= 0.07 and frac.max() <= 1.0 and math.isfinite(frac.mean().item())
