"""Mode conversion, EXIF orientation, extreme aspect ratios and open_clip transform parity."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import skimage.data
import torch
from PIL import Image

from contrastkit.training.encoders.base import Preprocess
from contrastkit.training.encoders.preprocess import clamp_aspect, ensure_rgb, to_tensor

CAT = Image.fromarray(skimage.data.chelsea())


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    img = CAT.convert("L").convert(mode) if mode in ("I;16", "I", "F") else CAT.convert(mode)
    out = ensure_rgb(img)
    assert out.mode == "RGB" and out.size == CAT.size


def test_sixteen_bit_is_rescaled_not_clipped() -> None:
    arr = np.array([[0, 1000, 4000]], dtype=np.uint16)
    out = np.asarray(ensure_rgb(Image.fromarray(arr)))[0, :, 0]
    assert out.tolist() == [0, 63, 255]  # 255 * value / range, not min(value, 255)


def test_alpha_is_composited_on_white() -> None:
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(ensure_rgb(clear)).min() == 255


def test_exif_orientation_is_applied() -> None:
    stored = CAT.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    import io

    buf = io.BytesIO()
    stored.save(buf, "PNG", exif=exif)
    tagged = Image.open(buf)
    np.testing.assert_array_equal(np.asarray(ensure_rgb(tagged)), np.asarray(CAT))


@pytest.mark.parametrize("size", [(1, 100000), (100000, 1), (3000, 10), (10, 1)])
def test_extreme_aspect_is_cropped_before_resize(size: tuple[int, int]) -> None:
    img = Image.new("RGB", size)
    w, h = clamp_aspect(img).size
    assert max(w, h) <= 2 * min(w, h) + 1
    assert to_tensor(img, Preprocess(size=32)).shape == (3, 32, 32)


def test_matches_open_clip_transform_on_ordinary_photos() -> None:
    cfg = Preprocess(size=224)
    ref = open_clip.image_transform(224, is_train=False)
    for arr in (skimage.data.chelsea(), skimage.data.astronaut(), skimage.data.rocket()):
        img = Image.fromarray(arr)
        torch.testing.assert_close(to_tensor(img, cfg), ref(img), atol=1e-6, rtol=0)
