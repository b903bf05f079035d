"""JPEG decoding on the model's device, batched, for when PIL on the CPU is the bottleneck.

On a GPU the image path is bound by CPU decoding (PIL), not by the model. So, when
enabled, a JPEG that needs nothing special is not decoded in the decode pool: the pool
only reads its header (size, mode, orientation; microseconds) and passes the file's
bytes on as a 1-D uint8 tensor. The image batcher's function (`DevicePixels`) then
decodes every such item of the batch in one `torchvision.io.decode_jpeg(...,
device=...)` call (nvJPEG on CUDA), resizes and crops each on the device, and stacks
them with the items the CPU prepared. Everything else keeps the CPU path: PNG, WebP,
GIF, CMYK JPEGs, JPEGs with an EXIF rotation, files that end without a JPEG
end-of-image marker (truncated: the CPU path names them with a 422), and files with far
more bytes than a JPEG of their declared size needs (a start-of-frame that says 1x1 over
a photo's worth of data: libjpeg skips what does not fit, and that mismatch is not handed
to nvJPEG).

Same limits and errors as the CPU path: the pixel limit is checked from the header
before any decoding; a JPEG the device refuses is decoded again by PIL in the batch;
one that PIL refuses too comes back as a row of NaN, which `ImageEmbedder` turns into
the usual 422 `image_decode_failed` for its request only (one bad upload does not fail
the batch it shares with other requests).

Pixels: the device path resizes the full-resolution decode with torchvision's
antialiased tensor resize, which is within 1 grey level of the CPU path's PIL resize
(tests/service/test_device_decode.py). The CPU path decodes JPEGs of at least twice the
model's input at a reduced DCT scale (PIL's draft mode, 4-8x faster); there the device
path is the more exact of the two.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode

from contrastkit.service.runtime.images import ImageError, decode_image
from contrastkit.training.encoders import Encoder
from contrastkit.training.encoders.base import Preprocess
from contrastkit.training.encoders.preprocess import MAX_ASPECT

log = logging.getLogger("contrastive.decode")

_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
_ORIENTATION = 0x0112
_TRAILER = 64  # bytes searched for the end-of-image marker (some files pad after it)
# The most bytes a JPEG of N pixels needs: 8 per pixel (noise at quality 100 without
# chroma subsampling takes about 4.3) plus 64 KiB of headers (tables, EXIF, ICC). A file
# past it holds data its header does not account for: the CPU decodes it.
_BYTES_PER_PIXEL, _HEADERS = 8, 64 << 10


def wants_device(blob: bytes, max_pixels: int, index: int = 0) -> bool:
    """Whether this upload can be decoded on the device; reads the header only.

    Raises ImageError `image_too_large` past `max_pixels`, as the CPU path would before
    decoding. False (take the CPU path) for anything but a plain RGB/greyscale JPEG that
    ends with its end-of-image marker and holds no more bytes than its size needs."""
    if not blob.startswith(_SOI) or _EOI not in blob[-_TRAILER:]:
        return False
    try:
        img = Image.open(io.BytesIO(blob))
        width, height = img.size
        plain = (
            img.format == "JPEG"
            and img.mode in ("RGB", "L")
            and img.getexif().get(_ORIENTATION, 1) == 1
        )
    except Exception:  # any parse failure: the CPU path gives the error
        return False
    if width * height > max_pixels:
        raise ImageError(
            "image_too_large",
            f"image {index} is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels}",
        )
    fits = len(blob) <= _HEADERS + _BYTES_PER_PIXEL * width * height
    return plain and fits and width >= 1 and height >= 1


def as_jpeg_item(blob: bytes) -> torch.Tensor:
    """File bytes -> uint8 [nbytes], the form a device-decoded item travels in (1-D, so
    the batch function tells it from a prepared uint8 [3, S, S] image)."""
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


def resize_crop(image: torch.Tensor, cfg: Preprocess) -> torch.Tensor:
    """uint8 [3, H, W] (any device) -> uint8 [3, S, S]: contrastkit.training.encoders.preprocess's
    clamp_aspect, resize and centre crop, on tensors."""
    _, h, w = image.shape
    if w >= h * MAX_ASPECT:  # same rounding as clamp_aspect, so the same pixels survive
        new_w = max(1, round(h * MAX_ASPECT))
        image = image[:, :, (w - new_w) // 2 : (w - new_w) // 2 + new_w]
    elif h >= w * MAX_ASPECT:
        new_h = max(1, round(w * MAX_ASPECT))
        image = image[:, (h - new_h) // 2 : (h - new_h) // 2 + new_h, :]
    interp = InterpolationMode(cfg.interpolation)
    if cfg.resize_mode == "squash":
        return TF.resize(image, [cfg.size, cfg.size], interpolation=interp, antialias=True)
    image = TF.resize(image, [cfg.size], interpolation=interp, antialias=True)
    return TF.center_crop(image, [cfg.size, cfg.size])


@dataclass
class DevicePixels:
    """The image batcher's function when device decoding is on: items (uint8 [3, S, S]
    prepared on the CPU, or uint8 [nbytes] JPEG files) -> [n, d] embeddings, NaN rows
    for the files that could not be decoded at all."""

    encoder: Encoder
    max_pixels: int

    def __call__(self, items: list[torch.Tensor]) -> torch.Tensor:
        pixels, failed = self.pixels(items)
        out = self.encoder.encode_image_tensors(pixels)
        if failed:
            out[failed] = float("nan")
        return out

    def pixels(self, items: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """items -> (uint8 [n, 3, S, S] on the encoder's device, indices that failed)."""
        cfg, device = self.encoder.info.preprocess, self.encoder.device
        files = [i for i, x in enumerate(items) if x.dim() == 1]
        out: list[torch.Tensor | None] = [
            x.to(device, non_blocking=True) if x.dim() == 3 else None for x in items
        ]
        for i, image in zip(files, self._decode([items[i] for i in files], device), strict=True):
            out[i] = resize_crop(image, cfg) if image is not None else self._on_cpu(items[i])
        failed = [i for i, x in enumerate(out) if x is None]
        blank = torch.zeros(3, cfg.size, cfg.size, dtype=torch.uint8, device=device)
        return torch.stack([x if x is not None else blank for x in out]), failed

    def _decode(self, files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
        """JPEG files -> uint8 [3, H, W] each on `device` (None: the device refused it).
        One batched call; when it fails, each file alone, so one bad file costs only itself."""
        if not files:
            return []
        # Exception, not only RuntimeError (what torchvision raises for a refused file):
        # whatever the decoder raises, the CPU decoder is the fall-back, and one file's
        # failure must not become the whole batch's 500
        try:
            return list(decode_jpeg(files, mode=ImageReadMode.RGB, device=device))
        except Exception:
            pass
        decoded: list[torch.Tensor | None] = []
        for f in files:
            try:
                decoded.append(decode_jpeg(f, mode=ImageReadMode.RGB, device=device))
            except Exception as e:
                log.info("device decoder refused a JPEG (%s); trying the CPU decoder", e)
                decoded.append(None)
        return decoded

    def _on_cpu(self, file: torch.Tensor) -> torch.Tensor | None:
        """The CPU path for a file the device refused -> uint8 [3, S, S] on the device,
        or None when PIL cannot decode it either."""
        try:
            image = decode_image(file.numpy().tobytes(), self.max_pixels)
        except ImageError:
            return None
        return self.encoder.preprocess_image(image).to(self.encoder.device)
