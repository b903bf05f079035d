"""A live image-text training Method as an Encoder: a run evaluates its own model as it
stands, with no export, and then goes on training it.

Two things must not leak into the training that follows:
- the train/eval mode: every forward runs in eval mode (no dropout, BatchNorm uses and
  keeps its running statistics), and each module's own flag is put back afterwards (a
  locked MiniLM stays in eval mode inside a model in train mode, so one `train()` call
  would not restore it);
- inference tensors: the Encoder's `torch.inference_mode` is replaced by `no_grad`, since
  the text tower caches caption embeddings that training later updates in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from contrastkit.training.encoders.base import IMAGE, TEXT, Encoder, EncoderInfo, Preprocess

if TYPE_CHECKING:
    from contrastkit.training.methods.clip import CLIP


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put `module` in eval mode; on exit give every submodule its own flag back."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class MethodEncoder(Encoder):
    """Embeds with a CLIP-like method's towers: `encode_image` (normalised float images
    [n, 3, S, S] -> [n, d]) and `encode_text` (n strings -> [n, d]).

    `preprocess` is the normalisation the method trained with (ImageNet mean/std at the
    run's image size, as contrastkit.training.export.build writes it). `info.logit_scale` is the
    method's capped multiplier when the encoder is made: evaluation ranks by cosine and
    never reads it.
    """

    def __init__(self, method: CLIP, preprocess: Preprocess, model_id: str = "run:clip") -> None:
        self.method = method
        self.device = method.logit_scale.device
        self.info = EncoderInfo(
            model_id=model_id,
            embed_dim=int(method.embed_dim),
            capabilities=frozenset({IMAGE, TEXT}),
            logit_scale=float(method.scale().detach()),
            preprocess=preprocess,
            default_templates=tuple(method.templates),
        )

    def _grad_mode(self) -> contextlib.AbstractContextManager[Any]:
        return torch.no_grad()  # not inference_mode: see the module docstring

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.method):
            return self.method.encode_image(pixels)

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        with eval_mode(self.method):
            return self.method.encode_text(texts)
