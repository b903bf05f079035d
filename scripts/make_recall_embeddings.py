"""Write tests/service/index/embedded/data/recall-digits.npz: real built-in-model
embeddings for the recall test (tests/service/index/embedded/test_recall.py), so the test
suite does not spend minutes embedding 27,000 images on every fresh machine.

    python scripts/make_recall_embeddings.py [--out PATH]      # ~4-8 min on 2 CPU cores

The set: scikit-learn's 1,797 handwritten digits as they are, then VARIANTS - 1 copies
of each under random rotations, shifts, scales, blur and colours (IVF switches on only
from ~24,300 vectors at its default nlist). Each image goes through the built-in model
(EfficientNet-Lite0 + MiniLM, ConSE) on the CPU. Vectors are stored as int8 (round(127 x))
with the model id and a hash of this recipe; the test dequantises and renormalises them
and checks a sample against the live model, so the file cannot drift from the code.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

OUT = Path(__file__).resolve().parents[1] / "tests/service/index/embedded/data/recall-digits.npz"
MODEL_ID = "builtin:conse-effnetlite0-minilm6-v1"
VARIANTS = 15  # per digit: the original and 14 augmented copies
CHUNK = 256  # images per encode_images call
SCALE = 127.0  # int8 quantisation of unit-vector components


def digit_image(pixels: np.ndarray) -> Image.Image:
    """An 8x8 digit (values 0-16) -> a 32x32 RGB image, white on black."""
    img = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), "L")
    return img.resize((32, 32), Image.Resampling.BICUBIC).convert("RGB")


def augmented_image(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The digit under a random affine map, blur, stroke and background colour."""
    img = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), "L")
    size = int(rng.integers(24, 48))
    img = img.resize((size, size), Image.Resampling.BICUBIC)
    img = img.rotate(
        float(rng.uniform(-25, 25)),
        resample=Image.Resampling.BILINEAR,
        translate=(round(rng.uniform(-3, 3)), round(rng.uniform(-3, 3))),
    )
    img = img.resize((32, 32), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    ink, paper = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if rng.random() < 0.5:  # dark ink on light paper, or the other way round
        ink, paper = paper // 3, 170 + paper // 3
    return ImageOps.colorize(img, black=tuple(map(int, paper)), white=tuple(map(int, ink)))


def recipe_hash() -> str:
    """Changes whenever the images or the quantisation would."""
    source = inspect.getsource(digit_image) + inspect.getsource(augmented_image)
    return hashlib.sha256(f"{MODEL_ID}\n{source}\n{VARIANTS}\n{SCALE}".encode()).hexdigest()[:16]


def load_digits() -> np.ndarray:
    """scikit-learn's digits: [1797, 8, 8], values 0-16 (shipped with the package)."""
    from sklearn.datasets import load_digits as sk_load

    return np.asarray(sk_load().images)


def images(count: int | None = None) -> list[Image.Image]:
    """The set in order: the 1,797 digits, then VARIANTS - 1 rounds of variants of each
    (all of it, or its first `count` images: the same ones, made faster)."""
    digits = load_digits()
    total = len(digits) * VARIANTS if count is None else count
    out = [digit_image(d) for d in digits[:total]]
    rng = np.random.default_rng(0)  # one stream, in order, so a prefix is the same images
    for _ in range(VARIANTS - 1):
        for d in digits:
            if len(out) >= total:
                return out
            out.append(augmented_image(d, rng))
    return out


def quantise(vectors: np.ndarray) -> np.ndarray:
    """Unit vectors [n, d] float -> int8 [n, d]."""
    return np.clip(np.rint(vectors * SCALE), -127, 127).astype(np.int8)


def dequantise(codes: np.ndarray) -> np.ndarray:
    """int8 [n, d] -> unit vectors [n, d] float32 (renormalised after rounding)."""
    v = codes.astype(np.float32) / SCALE
    return np.ascontiguousarray(v / np.linalg.norm(v, axis=1, keepdims=True), np.float32)


def embed(encoder: object, imgs: list[Image.Image]) -> np.ndarray:
    """Images -> [n, d] float32 through encoder.encode_images, CHUNK at a time."""
    from tqdm import tqdm

    out = [
        encoder.encode_images(imgs[i : i + CHUNK]).numpy()  # type: ignore[attr-defined]
        for i in tqdm(range(0, len(imgs), CHUNK), desc="embedding", unit="batch")
    ]
    return np.concatenate(out).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    from contrastkit.training.encoders import load_encoder

    encoder = load_encoder("builtin", device="cpu")
    assert encoder.model_id == MODEL_ID, encoder.model_id
    t0 = time.perf_counter()
    imgs = images()
    vectors = embed(encoder, imgs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, codes=quantise(vectors), model_id=MODEL_ID, recipe=recipe_hash())
    took = time.perf_counter() - t0
    print(f"embedded {len(imgs)} images in {took:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
