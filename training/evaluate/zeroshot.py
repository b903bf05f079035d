"""Zero-shot classification, built the open_clip way.

Every class name is put into every template and embedded; a class's unit text
embeddings are averaged over templates and renormalised, giving a classifier row; an
image is assigned the class whose row has the largest cosine with its embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from contrastkit.training.encoders import TEXT, Encoder
from contrastkit.training.encoders.templates import DEFAULT_TEMPLATES, SINGLE_TEMPLATE

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "ensemble": DEFAULT_TEMPLATES,
    "single": SINGLE_TEMPLATE,
}


@dataclass
class ZeroShotResult:
    top1: float
    templates: list[str]


def fill(template: str, label: str) -> str:
    # replace, not str.format: a template may hold other braces
    return template.replace("{}", label)


def zero_shot_classifier(
    encoder: Encoder, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """[C, d] unit rows: mean over templates of each class's unit text embeddings.

    Raises MissingCapabilityError when the encoder cannot embed text.
    """
    encoder.require(TEXT)
    texts = [fill(t, name) for name in classnames for t in templates]  # class-major
    emb = torch.cat(
        [encoder.encode_texts(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    )
    per_class = emb.reshape(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


def zero_shot_accuracy(
    features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor
) -> float:
    """features [n, d] unit, labels int64 [n], classifier [C, d] -> top-1 of argmax cosine."""
    pred = (features.float() @ classifier.T.float()).argmax(dim=1)
    return float((pred.cpu() == labels.cpu()).double().mean())


def zero_shot(
    encoder: Encoder,
    features: torch.Tensor,
    labels: torch.Tensor,
    classnames: Sequence[str],
    sets: Sequence[str] = ("ensemble", "single"),
) -> dict[str, ZeroShotResult]:
    """{set name: result} for each template set in `sets` (keys of TEMPLATE_SETS)."""
    out = {}
    for name in sets:
        templates = TEMPLATE_SETS[name]
        classifier = zero_shot_classifier(encoder, classnames, templates)
        out[name] = ZeroShotResult(
            zero_shot_accuracy(features, labels, classifier), list(templates)
        )
    return out
