"""Zero-shot classifiers built as open_clip builds them, cached per label set.

For each label, every template is filled in and embedded; the unit embeddings are
averaged over templates and renormalised. The result [labels, d] is cached per
(model_id, labels, templates), so a repeated label set costs only the images.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

import torch

Key = tuple[str, tuple[str, ...], tuple[str, ...]]


def fill(template: str, label: str) -> str:
    # replace, not str.format: a template may hold other braces ("{x} marks {}").
    return template.replace("{}", label)


def classifier_from_embeddings(emb: torch.Tensor, n_labels: int) -> torch.Tensor:
    """[labels * templates, d] unit embeddings (label-major) -> [labels, d] unit rows."""
    per_label = emb.reshape(n_labels, -1, emb.shape[-1]).mean(dim=1)
    return torch.nn.functional.normalize(per_label, dim=-1)


def probabilities(
    image_emb: torch.Tensor, classifier: torch.Tensor, logit_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, d] images, [L, d] classifier -> ([n, L] softmax probabilities, [n, L] cosine scores)."""
    scores = image_emb @ classifier.T
    return (logit_scale * scores).softmax(dim=-1), scores


class ClassifierCache:
    """LRU cache of zero-shot classifiers; `embed` embeds texts (through the batcher)."""

    def __init__(self, embed: Callable[[list[str]], Awaitable[torch.Tensor]], size: int) -> None:
        self.embed = embed
        self.size = size
        self._cache: OrderedDict[Key, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def get(
        self, model_id: str, labels: Sequence[str], templates: Sequence[str]
    ) -> torch.Tensor:
        key: Key = (model_id, tuple(labels), tuple(templates))
        if key in self._cache:
            self.hits += 1
            self._cache.move_to_end(key)
            return self._cache[key]
        self.misses += 1
        texts = [fill(t, label) for label in labels for t in templates]
        weights = classifier_from_embeddings(await self.embed(texts), len(labels))
        if self.size > 0:
            self._cache[key] = weights
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return weights
