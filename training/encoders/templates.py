"""Prompt templates for zero-shot classification.

The default is the seven-template ensemble that CLIP's authors selected for ImageNet
(the "simple" set open_clip also ships): it recovers most of the 80-template ensemble's
gain at a tenth of the text encoding cost, and it scored best for the built-in model too
(docs/benchmarks.md, "Tuning the built-in model").
"""

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

SINGLE_TEMPLATE: tuple[str, ...] = ("a photo of a {}.",)
