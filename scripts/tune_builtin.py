"""Tune and measure the built-in ConSE model's zero-shot accuracy (docs/benchmarks.md).

    python scripts/tune_builtin.py [--fashion N]

Two labelled sets that install offline: the scikit-image / scikit-learn photos with a
12-label vocabulary, and the first N Fashion-MNIST test images (Debian package
dataset-fashion-mnist) with its class names, drawn dark-on-white like a product photo
and as stored (white-on-black). Prints accuracy for each setting of top-T, centring,
class-name template and zero-shot templates, then the NLL of several logit scales for
the defaults.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from contrastkit.service.runtime.zeroshot import classifier_from_embeddings, fill
from contrastkit.training.encoders.builtin import BuiltinEncoder
from contrastkit.training.encoders.templates import DEFAULT_TEMPLATES, SINGLE_TEMPLATE

FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_NAMES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
PHOTO_LABELS = [
    "cat",
    "dog",
    "car",
    "airplane",
    "cup of coffee",
    "astronaut",
    "rocket",
    "horse",
    "coins",
    "camera",
    "flower",
    "building",
]
TEMPLATE_SETS = {"bare {}": ("{}",), "1 template": SINGLE_TEMPLATE, "CLIP 7": DEFAULT_TEMPLATES}


def photos() -> tuple[list[Image.Image], np.ndarray]:
    import skimage.data as d
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    named = {
        "cat": d.chelsea(),
        "cup of coffee": d.coffee(),
        "astronaut": d.astronaut(),
        "rocket": d.rocket(),
        "horse": d.horse(),
        "coins": d.coins(),
        "camera": d.camera(),
        "building": china,
        "flower": flower,
    }
    images = []
    for arr in named.values():
        a = np.asarray(arr)
        images.append(Image.fromarray(a if a.dtype == np.uint8 else (a * 255).astype(np.uint8)))
    return images, np.array([PHOTO_LABELS.index(k) for k in named])


def fashion(n: int) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    return x, y


@torch.inference_mode()
def logits(enc: BuiltinEncoder, images: list[Image.Image]) -> torch.Tensor:
    """ImageNet logits [n, 1000]: the expensive part, computed once per image set."""
    out = []
    for i in range(0, len(images), 64):
        px = torch.stack([enc.preprocess_image(im) for im in images[i : i + 64]])
        from contrastkit.training.encoders.preprocess import normalize

        out.append(enc.vision(normalize(px, enc.info.preprocess)).float())
    return torch.cat(out)


def scores(
    enc: BuiltinEncoder, lg: torch.Tensor, labels: list[str], templates: tuple[str, ...]
) -> np.ndarray:
    """Cosine scores [n, labels] from cached logits, as the encoder would compute them."""
    probs = lg.softmax(-1)
    top_p, top_i = probs.topk(enc.top_t, dim=-1)
    mixed = torch.einsum("nt,ntd->nd", top_p / top_p.sum(-1, keepdim=True), enc.class_emb[top_i])
    img = torch.nn.functional.normalize(mixed - enc.centre, dim=-1)
    texts = [fill(t, label) for label in labels for t in templates]
    weights = classifier_from_embeddings(enc.encode_texts(texts), len(labels))
    return (img @ weights.T).numpy()


def nll(s: np.ndarray, y: np.ndarray, scale: float) -> float:
    z = s * scale
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fashion", type=int, default=1000, help="Fashion-MNIST test images [1000]")
    args = ap.parse_args()
    enc = BuiltinEncoder(torch.device("cpu"))
    p_img, p_y = photos()
    sets = {"photos": (logits(enc, p_img), p_y, PHOTO_LABELS)}
    if FASHION.exists():
        fx, fy = fashion(args.fashion)
        sets["fmnist dark-on-white"] = (
            logits(enc, [Image.fromarray(255 - a) for a in fx]),
            fy,
            FASHION_NAMES,
        )
        sets["fmnist as stored"] = (
            logits(enc, [Image.fromarray(a) for a in fx]),
            fy,
            FASHION_NAMES,
        )
    print("| class template | top-T | centred | templates | " + " | ".join(sets) + " |")
    print("|---|---|---|---|" + "---|" * len(sets))
    for class_template in ("a photo of a {}.", "{}"):
        for centre in (False, True):
            enc.set_class_template(class_template, centre)
            for top_t in (1, 3, 5, 10, 20):
                enc.top_t = top_t
                for name, templates in TEMPLATE_SETS.items():
                    accs = [
                        (scores(enc, lg, labels, templates).argmax(1) == y).mean()
                        for lg, y, labels in sets.values()
                    ]
                    print(
                        f"| {class_template} | {top_t} | {centre} | {name} | "
                        + " | ".join(f"{a:.3f}" for a in accs)
                        + " |",
                        flush=True,
                    )
    enc.set_class_template("a photo of a {}.", True)
    enc.top_t = 10
    print("\n| logit scale | " + " | ".join(f"NLL {k}" for k in sets) + " |")
    print("|---|" + "---|" * len(sets))
    cached = {k: scores(enc, lg, labels, DEFAULT_TEMPLATES) for k, (lg, _, labels) in sets.items()}
    for scale in (5, 10, 15, 20, 30, 50, 100):
        print(
            f"| {scale} | "
            + " | ".join(f"{nll(cached[k], sets[k][1], scale):.3f}" for k in sets)
            + " |"
        )


if __name__ == "__main__":
    main()
