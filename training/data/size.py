"""The run's image size when `image_size` is left None ("follow the data"), the recipe
that size implies, and a check that the size is not far below the images' own.

Rules (README, Training: "Image size"):

    explicit image_size            wins, always
    fashion-mnist, mnist           28 (their native 28x28)
    torchvision small-image sets   their native side (CIFAR10/100, SVHN 32; STL10 96; ...)
    digits                         32, not the native 8: an 8x8 image leaves no room for
                                   random crops or the multi-crop methods' small crops
    folder, pairs, shards          224, the size of the ImageNet recipes (photos)
    other torchvision sets         224 (photos)

The size is resolved once, before the data loads (`settle_image_size`, called by the
Trainer), and written into `cfg.image_size`, so checkpoints, exports, kNN and resume
all see an int; code that runs later reads it with `image_size_of`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from contrastkit.training.augment import BLUR_MIN_SIZE, blur_applies, jitter_strength
from contrastkit.training.config import ConfigError, TrainConfig
from contrastkit.training.data import parse_spec
from contrastkit.training.data.arrays import ArrayData
from contrastkit.training.data.base import TrainData
from contrastkit.training.data.loader import FileData, PathSource

PHOTO_SIZE = 224  # SimCLR/MoCo/BYOL/SwAV/CLIP train ImageNet-like photos at 224 px
DIGITS_SIZE = 32  # the CIFAR recipes' size: room for crops of an upsampled 8x8 digit
IDX_SIZE = 28  # MNIST-format idx files (MNIST, Fashion-MNIST)
CIFAR_STEM_MAX = 64  # the Trainer's default: a CIFAR stem at or below this side
# torchvision sets held as small in-memory arrays: their native side (px). Others
# (Flowers102, Food101, ImageFolder-like sets) are photos and get PHOTO_SIZE.
TORCHVISION_NATIVE = {
    "CIFAR10": 32, "CIFAR100": 32, "SVHN": 32, "STL10": 96, "USPS": 16,
    "MNIST": 28, "FashionMNIST": 28, "KMNIST": 28, "EMNIST": 28, "QMNIST": 28,
}  # fmt: skip
# Warn when image_size < (median shorter side of the images) / FAR_BELOW: a quarter of
# the side keeps 1/16 of the pixels, which is where fine detail (text, texture, small
# objects) is gone. Never at or above PHOTO_SIZE: 224 px crops of multi-megapixel photos
# are the standard recipe, not a mistake.
FAR_BELOW = 4
SAMPLE_FILES = 32  # image headers read for the check (evenly spaced, so deterministic)


@dataclass(frozen=True)
class SizeChoice:
    """The resolved image side (px) and why, as the run's first log line says it;
    `from_data`: chosen by the data (the line then says how to change it)."""

    size: int
    reason: str
    from_data: bool = True

    def line(self) -> str:
        hint = "; set image_size to change" if self.from_data else ""
        return f"image size {self.size} px: {self.reason}{hint}"


def default_image_size(spec: str) -> SizeChoice:
    """The size `--data spec` trains at when image_size is None (see the module rules)."""
    parsed = parse_spec(spec)
    if parsed.kind == "digits":
        return SizeChoice(
            DIGITS_SIZE,
            "scikit-learn digits are 8x8, too small for random crops and multi-crop's "
            "small crops, so they are upsampled to the CIFAR recipes' 32",
        )
    if parsed.kind in ("fashion-mnist", "mnist"):
        return SizeChoice(IDX_SIZE, f"{parsed.kind}'s native size ({IDX_SIZE}x{IDX_SIZE})")
    if parsed.kind == "torchvision":
        native = TORCHVISION_NATIVE.get(str(parsed.name))
        if native is not None:
            return SizeChoice(native, f"{parsed.name}'s native size ({native}x{native})")
        return SizeChoice(
            PHOTO_SIZE, f"torchvision {parsed.name} is not a known small-image set: "
            "treated as photos (the ImageNet recipes' size)",
        )  # fmt: skip
    what = {"folder": "photo folder", "pairs": "captioned photos", "shards": "image shards"}
    return SizeChoice(PHOTO_SIZE, f"{what[parsed.kind]} (the ImageNet recipes' size)")


def resolve_image_size(cfg: TrainConfig, *, resumed: bool = False) -> SizeChoice:
    """cfg's image size and why: an explicit value wins; None follows the data."""
    if cfg.image_size is not None:
        why = "the resumed run's own (its checkpoint's)" if resumed else "set by image_size"
        if cfg.init_from and cfg.backbone.startswith("open_clip:") and not resumed:
            why = "the pretrained model's input size"
        return SizeChoice(cfg.image_size, why, from_data=False)
    return default_image_size(cfg.data)


def settle_image_size(cfg: TrainConfig, *, resumed: bool = False) -> SizeChoice:
    """Resolve cfg's image size and write the int into `cfg.image_size` (in place), so
    everything after (data, model, checkpoints, exports) sees the same number."""
    choice = resolve_image_size(cfg, resumed=resumed)
    cfg.image_size = choice.size
    return choice


def image_size_of(cfg: TrainConfig) -> int:
    """cfg.image_size after resolution; a clear error if a caller skipped it."""
    if cfg.image_size is None:
        raise ConfigError(
            "image_size is not resolved yet (None = follow the data): call "
            "contrastkit.training.data.size.settle_image_size(cfg) before using it"
        )
    return cfg.image_size


def stem_text(cfg: TrainConfig, size: int) -> str:
    """The ResNet stem the Trainer builds at `size` (its rule: a CIFAR stem at or below
    CIFAR_STEM_MAX unless cifar_stem says otherwise; other backbones have no choice)."""
    if "resnet" not in cfg.backbone:
        return f"{cfg.backbone} backbone (the CIFAR stem is for ResNets only)"
    if cfg.cifar_stem is not None:
        cifar, why = cfg.cifar_stem, "set by cifar_stem"
    else:
        cifar = size <= CIFAR_STEM_MAX
        why = f"{'at or below' if cifar else 'above'} {CIFAR_STEM_MAX} px"
    name = "CIFAR 3x3 stem, no max-pool" if cifar else "standard 7x7 stem + max-pool"
    return f"{name} ({why})"


def recipe_line(cfg: TrainConfig) -> str:
    """What the resolved size implies: the stem, SimCLR's jitter strength, the blur."""
    size = image_size_of(cfg)
    s = cfg.jitter_strength if cfg.jitter_strength is not None else jitter_strength(size)
    blur = "on" if blur_applies(size) else f"off (below {BLUR_MIN_SIZE} px)"
    return (
        f"recipe at {size} px: {stem_text(cfg, size)}; colour jitter strength s = {s:g} "
        f"where the method's recipe follows the size; Gaussian blur {blur}"
    )


def shorter_sides(paths: Sequence[str], limit: int = SAMPLE_FILES) -> list[int]:
    """Shorter sides (px) of up to `limit` evenly spaced files, from their headers only
    (PIL reads the size lazily); unreadable files are left out."""
    n = len(paths)
    picks = sorted({i * n // limit for i in range(limit)}) if n > limit else range(n)
    sides = []
    for i in picks:
        try:
            with Image.open(paths[i]) as image:
                sides.append(min(image.size))
        except Exception:  # a bad file is the loader's to report (it skips and counts)
            continue
    return sides


def native_side(data: TrainData) -> tuple[int, str] | None:
    """(the images' own shorter side in px, how it was measured), or None when the data
    cannot say cheaply (shards, torchvision sets decoded from files)."""
    if isinstance(data, ArrayData):
        return min(data.images.shape[-2:]), "the data set's native size"
    if isinstance(data, FileData) and isinstance(data.source, PathSource):
        sides = shorter_sides(data.source.paths)
        if sides:
            median = int(statistics.median(sides))
            return median, f"the median shorter side of {len(sides)} sampled images"
    return None


def size_warning(data: TrainData, image_size: int) -> str | None:
    """A warning when image_size is far below the images' own size (module FAR_BELOW),
    else None. Never raises: a size check must not stop a run."""
    if image_size >= PHOTO_SIZE:
        return None
    try:
        found = native_side(data)
    except Exception:  # the check is advice; data problems surface in the loader
        return None
    if found is None or image_size * FAR_BELOW >= found[0]:
        return None
    side, how = found
    return (
        f"image size {image_size} px is far below the images' own {side} px ({how}; "
        f"under 1/{FAR_BELOW}): fine detail is lost. Set image_size (e.g. --set "
        f"image_size={min(PHOTO_SIZE, side)}) to train closer to the images' size"
    )
