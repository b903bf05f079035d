"""`--data skimage-photos`: nine labelled real photos that install offline.

The scikit-image and scikit-learn sample photos (cat, coffee, astronaut, rocket, horse,
coins, camera, a building, a flower) against a 12-label vocabulary that adds dog, car and
airplane as distractors, so chance is 1/12. The same set tunes the built-in model
(scripts/tune_builtin.py, docs/benchmarks.md). There is no training split: zero-shot only.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from contrastkit.training.data import DataError

SPEC = "skimage-photos"
LABELS = [
    "cat", "dog", "car", "airplane", "cup of coffee", "astronaut",
    "rocket", "horse", "coins", "camera", "flower", "building",
]  # fmt: skip
# label -> scikit-image loader name, or a scikit-learn sample image index
_SKIMAGE = {"cat": "chelsea", "cup of coffee": "coffee", "astronaut": "astronaut",
            "rocket": "rocket", "horse": "horse", "coins": "coins", "camera": "camera"}  # fmt: skip
_SKLEARN = {"building": 0, "flower": 1}  # load_sample_images(): china.jpg, flower.jpg


def _to_image(arr: np.ndarray) -> Image.Image:
    # horse() is boolean and others may be float in [0, 1]: scale those to 8 bits
    a = np.asarray(arr)
    return Image.fromarray(a if a.dtype == np.uint8 else (a * 255).astype(np.uint8))


def load_photos() -> tuple[list[Image.Image], torch.Tensor, list[str]]:
    """(9 PIL images, int64 [9] labels indexing LABELS, LABELS)."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        from contrastkit.training.extras import install_hint

        missing = "skimage" if e.name and e.name.startswith("skimage") else "sklearn"
        raise DataError(f"--data {SPEC} {install_hint(missing)}") from e
    samples = load_sample_images().images
    images, labels = [], []
    for label, loader in _SKIMAGE.items():
        images.append(_to_image(getattr(skimage.data, loader)()))
        labels.append(LABELS.index(label))
    for label, index in _SKLEARN.items():
        images.append(_to_image(samples[index]))
        labels.append(LABELS.index(label))
    return images, torch.tensor(labels, dtype=torch.int64), list(LABELS)
