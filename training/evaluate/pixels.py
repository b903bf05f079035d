"""Image arrays -> the encoder's input pixels -> features, in batches.

The service turns each PIL image into model pixels with `contrastkit.training.encoders.preprocess`
(torchvision's resize on PIL, then a centre crop). Evaluation has whole uint8 arrays, so
it resizes batches of tensors instead, the same way: PIL resamples the width first, then
the height, rounding to 8 bits in between, and doing the same in torch gives the pixels
the service would compute within one grey level (bicubic; a plain 2-D tensor resize
differs by up to 25 levels on noisy images because it skips that rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from contrastkit.training.encoders import Encoder, Preprocess
from contrastkit.training.encoders.preprocess import MAX_ASPECT

Images = torch.Tensor | Sequence[Image.Image]


def _clamp_aspect(images: torch.Tensor, max_aspect: float = MAX_ASPECT) -> torch.Tensor:
    """Centre-crop [N, C, H, W] so that long / short <= max_aspect (as preprocess.clamp_aspect)."""
    h, w = images.shape[-2:]
    if w >= h * max_aspect:
        new_w = max(1, round(h * max_aspect))
        left = (w - new_w) // 2
        return images[..., left : left + new_w]
    if h >= w * max_aspect:
        new_h = max(1, round(w * max_aspect))
        top = (h - new_h) // 2
        return images[..., top : top + new_h, :]
    return images


def _target_size(h: int, w: int, cfg: Preprocess) -> tuple[int, int]:
    """(height, width) after the resize, as torchvision computes it for an int size."""
    if cfg.resize_mode == "squash":
        return cfg.size, cfg.size
    if h <= w:
        return cfg.size, int(cfg.size * w / h)
    return int(cfg.size * h / w), cfg.size


def to_model_pixels(
    images: torch.Tensor, cfg: Preprocess, device: torch.device | None = None
) -> torch.Tensor:
    """uint8 [N, C, H, W] (C = 1 or 3) -> uint8 [N, 3, S, S] on `device`, S = cfg.size.

    Grey images are repeated to RGB (PIL's "L" -> "RGB"); the shorter side is resized to
    S and the centre kept (or both sides squashed to S), exactly as the service does.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 [N, 1|3, H, W], got {images.dtype} {list(images.shape)}")
    x = _clamp_aspect(images.to(device) if device is not None else images)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    out_h, out_w = _target_size(h, w, cfg)
    mode = InterpolationMode(cfg.interpolation)
    if out_w != w:  # width first, rounded to uint8: PIL's order
        x = TF.resize(x, [h, out_w], interpolation=mode, antialias=True)
    if out_h != h:
        x = TF.resize(x, [out_h, out_w], interpolation=mode, antialias=True)
    return TF.center_crop(x, [cfg.size, cfg.size]).contiguous()


def extract_features(
    encoder: Encoder, images: Images, batch_size: int = 256, desc: str = "embed"
) -> torch.Tensor:
    """uint8 [N, C, H, W] tensor, or N PIL images -> unit features float32 [N, d] on the CPU.

    Works batch by batch, so model-sized pixels for only `batch_size` images exist at a
    time (60,000 images at 224 px would be 9 GB). A progress bar shows on a terminal.
    """
    n = len(images)
    out = []
    with tqdm(total=n, desc=desc, unit="img", disable=None, leave=False) as bar:
        for start in range(0, n, batch_size):
            chunk = images[start : start + batch_size]
            if isinstance(chunk, torch.Tensor):
                pixels = to_model_pixels(chunk, encoder.info.preprocess, encoder.device)
            else:
                pixels = torch.stack([encoder.preprocess_image(im) for im in chunk])
            out.append(encoder.encode_image_tensors(pixels))
            bar.update(len(chunk))
    return torch.cat(out) if out else torch.empty(0, encoder.embed_dim)
