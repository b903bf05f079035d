"""PIL image -> normalised tensor, shared by every encoder family.

The resize + centre-crop is torchvision's (the one open_clip uses), so an open_clip model
served here sees exactly the pixels open_clip's own transform would give it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from contrastkit.training.encoders.base import Preprocess

# An image longer than this aspect ratio is centre-cropped to it before resizing: the
# final centre crop would discard those pixels anyway, and resizing a 1 x 100000 strip
# to a 224-pixel short side first would allocate gigabytes.
MAX_ASPECT = 2.0

_ORIENTATION = 0x0112  # the EXIF tag
_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def ensure_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, upright.

    EXIF orientation is applied; alpha is composited on white (what a viewer shows);
    16-bit and float greyscale are rescaled by their range rather than clipped at 255.
    """
    if image.getexif().get(_ORIENTATION, 1) != 1:  # copy only when it must turn
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_MODES:
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = Image.fromarray(((arr - lo) * scale).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def clamp_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Centre-crop the long side so that long / short <= max_aspect."""
    w, h = image.size
    if w >= h * max_aspect:
        new_w = max(1, round(h * max_aspect))
        left = (w - new_w) // 2
        return image.crop((left, 0, left + new_w, h))
    if h >= w * max_aspect:
        new_h = max(1, round(w * max_aspect))
        top = (h - new_h) // 2
        return image.crop((0, top, w, top + new_h))
    return image


def to_pixels(image: Image.Image, cfg: Preprocess) -> torch.Tensor:
    """PIL image -> uint8 [3, size, size], resized and centre-cropped, not yet normalised.

    No torch arithmetic happens here: this runs in decode threads, and torch ops there
    would start OpenMP teams that spin against the model thread's. Normalisation runs
    batched, on the model's device (`normalize`).
    """
    # torchvision is imported on first use (then it is in sys.modules): the model library
    # is imported by commands that never resize an image, such as `contrastive train --help`
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    image = clamp_aspect(ensure_rgb(image))
    interp = InterpolationMode(cfg.interpolation)
    if cfg.resize_mode == "squash":
        image = TF.resize(image, [cfg.size, cfg.size], interpolation=interp)
    else:
        image = TF.resize(image, cfg.size, interpolation=interp)
        image = TF.center_crop(image, [cfg.size, cfg.size])
    return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())


def normalize(pixels: torch.Tensor, cfg: Preprocess) -> torch.Tensor:
    """uint8 [n, 3, S, S] (any device) -> float32 [n, 3, S, S], (x / 255 - mean) / std."""
    mean = torch.tensor(cfg.mean, device=pixels.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(cfg.std, device=pixels.device).view(1, 3, 1, 1) * 255.0
    return (pixels.float() - mean) / std


def to_tensor(image: Image.Image, cfg: Preprocess) -> torch.Tensor:
    """PIL image -> float32 [3, size, size], normalised (the two steps above, for one image)."""
    return normalize(to_pixels(image, cfg)[None], cfg)[0]
