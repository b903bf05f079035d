"""The traceable forward of an Encoder's towers: what contrastkit.training.export.onnx hands the
exporter.

Image: `Encoder._image_forward` itself, whatever the family, followed by the L2
normalisation that `Encoder.encode_image_tensors` applies; so the graph is, by
construction, the torch encoder's image path after pixel normalisation.

Text: `_text_forward` takes strings, which no graph can, so the tensor part is found per
family and split from its tokenizer (`TextSource`):
  - an encoder with an `onnx_text_source()` method (the hook for a new family) -> its answer;
  - an open_clip model with open_clip's BPE tokenizer -> `model.encode_text(input_ids)`;
  - an encoder holding one training text tower (contrastkit.training.encoders.nets.text_towers):
    TransformerTower -> its forward on input_ids; MiniLMTower -> its forward on
    input_ids + attention_mask (the tokens path, also for a locked tower: locked only
    means cached, the function is the same).
Anything else gets no text graph; the parity check catches a source that is not the
encoder's own text path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from contrastkit.training.encoders.base import Encoder
from contrastkit.training.encoders.exported.onnx_runtime import TensorFn, TextSource
from contrastkit.training.encoders.nets.minilm import MAX_TOKENS


class _Graph(nn.Module):
    """Registers `parts` (so their weights are parameters of the traced module, not
    anonymous constants) and applies `fn`, then the L2 normalisation."""

    def __init__(self, parts: list[nn.Module], fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.fn(x).float(), dim=-1)


class _MaskedGraph(_Graph):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = self.fn({"input_ids": input_ids, "attention_mask": attention_mask})
        return nn.functional.normalize(out.float(), dim=-1)


def modules_of(encoder: Encoder) -> list[nn.Module]:
    """The encoder's nn.Module attributes, each once."""
    seen: dict[int, nn.Module] = {}
    for value in vars(encoder).values():
        if isinstance(value, nn.Module):
            seen.setdefault(id(value), value)
    return list(seen.values())


def image_module(encoder: Encoder) -> nn.Module:
    """float32 pixel_values [n, 3, S, S] (normalised) -> unit image_embeds [n, d]."""
    return _Graph(modules_of(encoder), encoder._image_forward)


def text_module(source: TextSource) -> nn.Module:
    """int64 input_ids [n, T] (+ attention_mask [n, T]) -> unit text_embeds [n, d]."""
    if source.inputs == ["input_ids"]:
        return _Graph(source.modules, lambda ids: source.forward({"input_ids": ids}))
    return _MaskedGraph(source.modules, source.forward)


def text_source(encoder: Encoder) -> tuple[TextSource | None, str]:
    """-> (TextSource, "") or (None, why there is none)."""
    hook = getattr(encoder, "onnx_text_source", None)
    if callable(hook):
        source = hook()
        return (source, "") if source is not None else (None, "the encoder offers no text graph")
    model: Any = getattr(encoder, "model", None)
    tokenizer: Any = getattr(encoder, "tokenizer", None)
    if isinstance(model, nn.Module) and hasattr(model, "encode_text") and _is_bpe(tokenizer):
        spec = {"kind": "open_clip", "context_length": int(tokenizer.context_length)}
        fn: TensorFn = lambda t: model.encode_text(t["input_ids"])  # type: ignore[operator]  # noqa: E731
        return TextSource(fn, spec, ["input_ids"], [model]), ""
    return _tower_source(encoder)


def _tower_source(encoder: Encoder) -> tuple[TextSource | None, str]:
    from contrastkit.training.encoders.nets.text_towers import (
        MiniLMTower,
        TextTower,
        TransformerTower,
    )

    towers = {
        id(m): m for part in modules_of(encoder) for m in part.modules() if isinstance(m, TextTower)
    }
    if len(towers) != 1:
        return None, f"found {len(towers)} text towers of a known kind (need exactly one)"
    tower = next(iter(towers.values()))
    if isinstance(tower, TransformerTower):
        spec = {"kind": "open_clip", "context_length": tower.context_length}
        return TextSource(tower.forward, spec, ["input_ids"], [tower]), ""
    if isinstance(tower, MiniLMTower):
        spec = {"kind": "minilm", "max_length": MAX_TOKENS}
        return TextSource(tower.forward, spec, ["input_ids", "attention_mask"], [tower]), ""
    return None, f"no ONNX recipe for the text tower {type(tower).__name__}"


def _is_bpe(tokenizer: object) -> bool:
    from open_clip.tokenizer import SimpleTokenizer

    return isinstance(tokenizer, SimpleTokenizer)
