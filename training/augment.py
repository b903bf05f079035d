"""Batched SimCLR-family augmentations on image tensors (GPU; the same code runs on the CPU).

A whole uint8 batch is augmented at once: no Python loop over images, no host sync. Every
per-image random number comes from the Augmenter's own ``torch.Generator`` on the device,
whose state goes into checkpoints so that a resumed run draws exactly the same views.

Pipeline for one view (as torchvision's SimCLR recipe, with these deliberate differences):
random resized crop as one ``roi_align`` resampling (bilinear; when a crop is shrunk, several
samples per output pixel are averaged, a box-filter antialias) + horizontal flip -> colour
jitter with probability ``jitter_p`` -> grayscale (ITU-R 601 luma, 3 channels) -> Gaussian
blur -> solarize -> normalise with mean/std. Colour jitter applies brightness, contrast,
saturation, hue in that FIXED order (torchvision shuffles the order per image; a per-image
order would cost 4x the work or a sort of the batch, for a negligible change in the views).
Hue is shifted through an exact RGB -> HSV -> RGB round trip, as torchvision does (not a YIQ
rotation, which leaves the gamut and needs clamping). Every step clamps to [0, 1] like
torchvision's tensor ops. Images chosen not to get a step are passed through ``torch.where``,
so shapes never depend on the coin flips.

Colour jitter strength by recipe (each the paper's own): SimCLR and SwAV use SimCLR's
ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with s from the image size (``jitter_strength``: 1.0
from 96 px, i.e. 0.8/0.8/0.8/0.2 on ImageNet-like inputs; 0.5, i.e. 0.4/0.4/0.4/0.1, on
32 px CIFAR-like inputs); MoCo v2 uses 0.4/0.4/0.4/0.1 and BYOL 0.4/0.4/0.2/0.1 at every
size, as their papers do at 224 px. SimSiam's views are MoCo v2's (its paper's recipe);
DINO's are its own: BYOL's jitter and asymmetric blur/solarize on two global crops, plus
local crops (the official code's DataAugmentationDINO).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)  # ITU-R BT.601
_TRIES = 10  # candidate boxes per image, as torchvision's RandomResizedCrop
BLUR_MIN_SIZE = 64  # SimCLR/BYOL drop the blur on CIFAR-sized images
# SimCLR's colour strength s is 1.0 on ImageNet (224 px) and 0.5 on CIFAR-10 (32 px);
# STL-10 (96 px) and larger are photos of ImageNet's kind, so they get the ImageNet value.
_FULL_JITTER_MIN_SIZE = 96


@dataclass(frozen=True)
class ViewSpec:
    """One view's recipe. Probabilities are per image; jitter = (brightness, contrast,
    saturation, hue), factors uniform in [max(0, 1 - s), 1 + s], hue shift in [-h, h] turns.

    ``jitter_strength``: set by recipes whose jitter is SimCLR's ``simclr_jitter(s)`` at a
    strength chosen by image size; an Augmenter given a strength replaces it (the run
    setting `jitter_strength`). None: the jitter is the recipe's own, never replaced."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)  # crop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop width / height, log-uniform
    hflip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels of the output view
    solarize_p: float = 0.0
    jitter_strength: float | None = None

    def __post_init__(self) -> None:
        probs = (self.hflip_p, self.jitter_p, self.gray_p, self.blur_p, self.solarize_p)
        checks = [
            (self.size >= 1, f"size must be >= 1, got {self.size}"),
            (0 < self.scale[0] <= self.scale[1], f"scale needs 0 < lo <= hi, got {self.scale}"),
            (0 < self.ratio[0] <= self.ratio[1], f"ratio needs 0 < lo <= hi, got {self.ratio}"),
            (min(self.jitter) >= 0, f"jitter strengths must be >= 0, got {self.jitter}"),
            (self.jitter[3] <= 0.5, f"hue jitter must be <= 0.5 turns, got {self.jitter[3]}"),
            (0 < self.blur_sigma[0] <= self.blur_sigma[1], f"bad blur_sigma {self.blur_sigma}"),
            (all(0 <= p <= 1 for p in probs), f"probabilities must be in [0, 1], got {probs}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def blur_applies(size: int) -> bool:
    """Do the recipes blur views of side ``size``? Not below 64 px (SimCLR on CIFAR)."""
    return size >= BLUR_MIN_SIZE


def _blur_p(size: int, p: float) -> float:
    return p if blur_applies(size) else 0.0


def jitter_strength(size: int) -> float:
    """SimCLR's colour distortion strength s for images of side ``size`` (px).

    Chen et al. 2020 (SimCLR, appendix A) use s = 1.0 on ImageNet and s = 0.5 on CIFAR-10
    (B.9); SwAV (Caron et al. 2020) keeps s = 1.0 on ImageNet. Rule: s = 1.0 from 96 px up
    (STL-10 and ImageNet-like photos), 0.5 below (CIFAR, digits, Tiny-ImageNet's 64 px).
    """
    return 1.0 if size >= _FULL_JITTER_MIN_SIZE else 0.5


def simclr_jitter(strength: float) -> tuple[float, float, float, float]:
    """SimCLR's ColorJitter(0.8s, 0.8s, 0.8s, 0.2s): (0.8, 0.8, 0.8, 0.2) at s = 1,
    (0.4, 0.4, 0.4, 0.1) at s = 0.5."""
    return (0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)


def simclr_view(size: int) -> ViewSpec:
    """SimCLR's view (Chen et al. 2020): colour jitter of strength ``jitter_strength(size)``
    (0.8/0.8/0.8/0.2 from 96 px, 0.4/0.4/0.4/0.1 below), p 0.8; grayscale p 0.2; blur
    p = 0.5 only for images >= 64 px (none on CIFAR)."""
    s = jitter_strength(size)
    return ViewSpec(size, jitter=simclr_jitter(s), jitter_strength=s, blur_p=_blur_p(size, 0.5))


def moco_v2_view(size: int, min_scale: float = 0.2) -> ViewSpec:
    """MoCo v2's view (Chen et al. 2020, "Improved Baselines", the `aug_plus` recipe of
    facebookresearch/moco): crop scale 0.2-1, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8 at
    every size (MoCo v2 used 0.4 at 224 px, unlike SimCLR's 0.8), grayscale p 0.2, blur
    p 0.5 (only for images >= 64 px, as for SimCLR)."""
    jitter = (0.4, 0.4, 0.4, 0.1)
    return ViewSpec(size, scale=(min_scale, 1.0), jitter=jitter, blur_p=_blur_p(size, 0.5))


def simsiam_view(size: int) -> ViewSpec:
    """SimSiam's view, the same for both views: Chen & He 2021 and their code
    (facebookresearch/simsiam) use MoCo v2's augmentation. Crop scale 0.2-1,
    ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2, blur p 0.5 (only for images
    >= 64 px, this module's rule for CIFAR-sized images; solo-learn's CIFAR recipe keeps
    p 0.5), flip; no solarize. Exactly ``moco_v2_view(size)``, named so that SimSiam
    says whose recipe it uses."""
    return moco_v2_view(size, min_scale=0.2)


def byol_views(size: int) -> tuple[ViewSpec, ViewSpec]:
    """BYOL's asymmetric pair (Grill et al. 2020, table 6): ColorJitter(0.4, 0.4, 0.2, 0.1)
    p 0.8 at every size (the paper's own values at 224 px, kept rather than SimCLR's
    size rule; solo-learn's CIFAR recipe keeps them too); blur 1.0 / 0.1 (only for
    images >= 64 px); solarize 0.0 / 0.2."""
    jitter = (0.4, 0.4, 0.2, 0.1)
    first = ViewSpec(size, jitter=jitter, blur_p=_blur_p(size, 1.0), solarize_p=0.0)
    second = ViewSpec(size, jitter=jitter, blur_p=_blur_p(size, 0.1), solarize_p=0.2)
    return first, second


def small_crop_side(size: int, small_size: int | None = None) -> int:
    """Side of the multi-crop small crops: ``small_size``, else round(size * 96 / 224)
    (SwAV's and DINO's 96 px at 224), at least 8."""
    return small_size if small_size is not None else max(8, round(size * 96 / 224))


def multicrop_views(size: int, n_small: int = 4, small_size: int | None = None) -> list[ViewSpec]:
    """SwAV multi-crop: 2 global views (scale 0.14-1) then ``n_small`` small ones (scale
    0.05-0.14) of side ``small_crop_side(size, small_size)``.

    Colour jitter is SimCLR's at the strength of the *global* size (SwAV's
    get_color_distortion(s=1.0) on every crop at 224 px; 0.4/0.4/0.4/0.1 on CIFAR): the
    strength follows the data set's resolution, not the side a crop is resized to."""
    small = small_crop_side(size, small_size)
    s = jitter_strength(size)
    big = ViewSpec(size, scale=(0.14, 1.0), jitter=simclr_jitter(s), jitter_strength=s,
                   blur_p=_blur_p(size, 0.5))  # fmt: skip
    little = replace(big, size=small, scale=(0.05, 0.14), blur_p=_blur_p(small, 0.5))
    return [big, big, *([little] * n_small)]


def dino_views(size: int, n_small: int = 6, small_size: int | None = None) -> list[ViewSpec]:
    """DINO's multi-crop (Caron et al. 2021; DataAugmentationDINO of facebookresearch/dino):
    2 global crops of side ``size`` then ``n_small`` local crops of side
    ``small_crop_side(size, small_size)``.

    Every crop: flip, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8 (BYOL's, at every size, as
    DINO's code has it; the run's jitter_strength does not touch it), grayscale p 0.2.
    Global crop 1: blur p 1.0; global crop 2: blur p 0.1 and solarize p 0.2; local crops:
    blur p 0.5. Blur only where the crop is >= 64 px (as SimCLR drops it on CIFAR).
    Scales 0.14-1 (global) and 0.05-0.14 (local): the official README's ResNet-50 command
    (main_dino.py's defaults 0.4-1 and 0.05-0.4 are for ViTs)."""
    jitter = (0.4, 0.4, 0.2, 0.1)
    first = ViewSpec(size, scale=(0.14, 1.0), jitter=jitter, blur_p=_blur_p(size, 1.0))
    second = replace(first, blur_p=_blur_p(size, 0.1), solarize_p=0.2)
    small = small_crop_side(size, small_size)
    local = replace(first, size=small, scale=(0.05, 0.14), blur_p=_blur_p(small, 0.5))
    return [first, second, *([local] * n_small)]


def sample_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """Random-resized-crop boxes with torchvision's semantics, for n images at once.

    Each image draws 10 candidates (area fraction ~ U(scale), aspect w/h log-uniform in
    ratio, sides rounded to whole pixels) and keeps the first that fits; if none fits it
    gets the centre crop with its aspect clamped into ``ratio``. The offset is uniform over
    the whole-pixel positions. Returns float32 [n, 4] (x0, y0, x1, y1) in pixels (integers),
    on the generator's device.
    """
    dev = generator.device
    u = torch.rand(n, _TRIES, 4, generator=generator, device=dev)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[..., 1])
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first max
    w, h, ux, uy = (t.gather(1, first).squeeze(1) for t in (w, h, u[..., 2], u[..., 3]))
    # min() guards float rounding of u * k up to k for u just below 1
    x0 = torch.minimum(torch.floor(ux * (width - w + 1)), width - w)
    y0 = torch.minimum(torch.floor(uy * (height - h + 1)), height - h)
    cw, ch = _centre_size(height, width, ratio)
    found = fits.any(dim=1)
    x0 = torch.where(found, x0, float((width - cw) // 2))
    y0 = torch.where(found, y0, float((height - ch) // 2))
    w, h = torch.where(found, w, float(cw)), torch.where(found, h, float(ch))
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def _centre_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's fallback: the whole image, cut to the nearest aspect inside ``ratio``."""
    if width / height < ratio[0]:
        return width, round(width / ratio[0])
    if width / height > ratio[1]:
        return round(height * ratio[1]), height
    return width, height


def resized_crop(x: Tensor, boxes: Tensor, size: int, flip: Tensor) -> Tensor:
    """Crop float [B,C,H,W] to ``boxes`` [B,4] (pixels), resize to [B,C,size,size] and
    mirror the images where bool ``flip`` [B] is set. Bilinear with half-pixel centres (as
    F.interpolate, align_corners=False); ceil(box/size) samples per output pixel and axis."""
    # imported on first use: listing the methods (which import this module) should not
    # load torchvision's ~2,000 modules; later calls find it in sys.modules
    from torchvision.ops import roi_align

    index = torch.arange(x.shape[0], device=x.device, dtype=boxes.dtype)
    rois = torch.cat([index[:, None], boxes], dim=1)
    out = roi_align(x, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def _gray(x: Tensor) -> Tensor:
    """Luma of RGB [B,3,H,W] -> [B,1,H,W]."""
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1]; factor [B] per image."""
    f = factor[:, None, None, None]
    return (f * x + (1 - f) * other).clamp_(0.0, 1.0)


def shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of RGB [B,3,H,W] in [0,1] by ``shift`` [B] turns (HSV round trip)."""
    value, top = x.max(dim=1)
    delta = value - x.min(dim=1).values
    sat = delta / torch.where(value > 0, value, 1.0)
    r, g, b = x.unbind(1)
    d = torch.where(delta > 0, delta, 1.0)
    sector = torch.stack([((g - b) / d) % 6, (b - r) / d + 2, (r - g) / d + 4], dim=1)
    hue = sector.gather(1, top.unsqueeze(1)).squeeze(1) / 6  # top = first channel at the max
    hue = (torch.where(delta > 0, hue, 0.0) + shift[:, None, None]) % 1.0
    # HSV -> RGB: channel n = v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
    n = torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1)  # 5, 3, 1; no copy
    k = (n + 6 * hue.unsqueeze(1)) % 6
    ramp = torch.minimum(k, 4 - k).clamp_(0.0, 1.0)
    return value.unsqueeze(1) * (1 - sat.unsqueeze(1) * ramp)


def color_jitter(x: Tensor, factors: Tensor, hue: Tensor | None) -> Tensor:
    """Brightness, contrast, saturation (factors [B,3]), then hue (``hue`` [B] turns, or None),
    in this fixed order, on RGB [B,3,H,W] in [0,1]. Factors 1, hue 0 leave an image as it is."""
    x = (x * factors[:, 0, None, None, None]).clamp_(0.0, 1.0)
    x = _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factors[:, 1])
    x = _blend(x, _gray(x), factors[:, 2])
    return x if hue is None else _where(hue != 0, shift_hue(x, hue), x)


def blur_kernel_size(size: int) -> int:
    """Odd kernel side of about 10% of the image side (SimCLR: 23 px at 224), at least 3."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel: int) -> Tensor:
    """Blur [B,C,H,W] with a separable Gaussian of per-image ``sigma`` [B] (pixels), odd
    ``kernel`` side, reflect padding (torchvision's), as one grouped conv per axis."""
    b, c, height, width = x.shape
    taps = torch.arange(kernel, device=x.device, dtype=x.dtype) - (kernel - 1) / 2
    weights = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    weights = (weights / weights.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
    pad = kernel // 2
    y = F.pad(x.reshape(1, b * c, height, width), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, weights.view(b * c, 1, 1, kernel), groups=b * c)
    y = F.conv2d(y, weights.view(b * c, 1, kernel, 1), groups=b * c)
    return y.view(b, c, height, width)


def _uniform(u: Tensor, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * u


class Augmenter:
    """Makes views of uint8 batches on ``device`` with its own seeded generator.

    ``jitter_strength``: when set, views whose recipe sized SimCLR's jitter by image size
    (``ViewSpec.jitter_strength`` set) get ``simclr_jitter(jitter_strength)`` instead; a
    run's setting, so that a checkpoint from before the size rule keeps its s = 0.5.
    """

    def __init__(
        self,
        device: torch.device | str,
        seed: int = 0,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        jitter_strength: float | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.jitter_strength = jitter_strength
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def __call__(self, images: Tensor, spec: ViewSpec) -> Tensor:
        """uint8 [B,C,H,W] (C 1 or 3) -> float32 [B,3,size,size], normalised, contiguous."""
        s = self.jitter_strength
        if s is not None and spec.jitter_strength is not None and s != spec.jitter_strength:
            spec = replace(spec, jitter=simclr_jitter(s), jitter_strength=s)
        x = _to_float(images, self.device)
        b, _, height, width = x.shape
        boxes = sample_boxes(b, height, width, spec.scale, spec.ratio, self.generator)
        # one draw for every other per-image number: 5 coins, 3 jitter factors, hue, sigma
        u = torch.rand(b, 10, generator=self.generator, device=self.device)
        # crop single-channel images before widening them: a third of the resampling work
        x = _to_rgb(resized_crop(x, boxes, spec.size, u[:, 0] < spec.hflip_p))
        if spec.jitter_p > 0 and max(spec.jitter) > 0:
            on = u[:, 1] < spec.jitter_p
            bounds = [(max(0.0, 1 - s), 1 + s) for s in spec.jitter[:3]]
            factors = torch.stack([_uniform(u[:, 5 + i], *bounds[i]) for i in range(3)], 1)
            hue = _uniform(u[:, 8], -spec.jitter[3], spec.jitter[3])
            hue_on = torch.where(on, hue, 0.0) if spec.jitter[3] > 0 else None
            x = color_jitter(x, torch.where(on[:, None], factors, 1.0), hue_on)
        if spec.gray_p > 0:
            x = _where(u[:, 2] < spec.gray_p, _gray(x).expand_as(x), x)
        if spec.blur_p > 0:
            sigma = _uniform(u[:, 9], *spec.blur_sigma)
            blurred = gaussian_blur(x, sigma, blur_kernel_size(spec.size))
            x = _where(u[:, 3] < spec.blur_p, blurred, x)
        if spec.solarize_p > 0:
            x = _where(u[:, 4] < spec.solarize_p, torch.where(x >= 0.5, 1 - x, x), x)
        return self._normalize(x)

    def eval_view(self, images: Tensor, size: int) -> Tensor:
        """Deterministic view: the whole uint8 [B,C,H,W] image resized to [B,3,size,size]
        (bilinear, antialiased), normalised float32. Draws no random numbers."""
        x = _to_float(images, self.device)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return self._normalize(_to_rgb(x))

    def _normalize(self, x: Tensor) -> Tensor:
        return ((x - self._mean) / self._std).contiguous()

    def state_dict(self) -> dict[str, Tensor]:
        """The generator state (a CPU uint8 tensor), for checkpoints."""
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["rng"].cpu())


def _to_float(images: Tensor, device: torch.device) -> Tensor:
    """uint8 [B,C,H,W], C 1 or 3 -> float32 in [0, 1] on ``device``."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 [B,1|3,H,W], got {images.dtype} {list(images.shape)}")
    return images.to(device, non_blocking=True).float().div_(255)


def _to_rgb(x: Tensor) -> Tensor:
    """[B,1,H,W] -> [B,3,H,W] (a view, repeated channel); [B,3,H,W] unchanged."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _where(on: Tensor, changed: Tensor, x: Tensor) -> Tensor:
    """Per image: ``changed`` where bool ``on`` [B] is set, else ``x``."""
    return torch.where(on[:, None, None, None], changed, x)
