"""Text towers for CLIP training: captions -> [n, out_dim] embeddings (not normalised).

A tower works in two steps so that the host-side work (tokenising, cache look-ups) happens
in `make_views`, outside the timed forward/backward, and so that a whole table of
captions can be prepared once and indexed on the device:

    prepare(texts, device) -> dict of tensors, each with leading dim n (rows can be indexed)
    forward(prepared)      -> float [n, out_dim]

Two towers:
- `TransformerTower`: open_clip's causal text transformer with its BPE tokenizer (the
  vocabulary ships inside the open_clip wheel, so it works offline), trained from scratch.
- `MiniLMTower`: the packaged all-MiniLM-L6-v2 (384-d, mean pooled). Locked (LiT, Zhai et
  al. 2022: lock the text side, tune the image side) it is a fixed function of the string,
  so `prepare` returns its embeddings from a per-caption cache and the forward adds only
  the (optional) projection. Unlocked it trains, with a projection.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from contrastkit.training.encoders.nets.minilm import MiniLM

CACHE_ROWS = 65536  # cached caption embeddings (384 floats each: ~100 MB at most)
_EMBED_CHUNK = 256  # captions per frozen MiniLM call when filling the cache


class TextTower(nn.Module, ABC):
    """Captions -> embeddings. `width` is the tower's own output width before projection."""

    width: int
    out_dim: int

    @abstractmethod
    def prepare(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """n captions -> dict of tensors with leading dim n, on `device`."""

    @abstractmethod
    def forward(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        """prepare()'s output (or rows of it) -> float [n, out_dim]."""


class TransformerTower(TextTower):
    """open_clip's text transformer (argmax/EOT pooling, linear projection), random init."""

    def __init__(self, width: int, layers: int, heads: int, context_length: int, out_dim: int):
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer
        from open_clip.transformer import TextTransformer

        if width % heads:
            raise ValueError(f"text_width ({width}) must be a multiple of text_heads ({heads})")
        self.tokenizer = SimpleTokenizer(context_length=context_length)
        self.model = TextTransformer(
            context_length=context_length,
            vocab_size=len(self.tokenizer.encoder),
            width=width,
            heads=heads,
            layers=layers,
            output_dim=out_dim,
        )
        self.context_length = context_length
        self.width, self.out_dim = width, out_dim
        self.layers, self.heads = layers, heads

    def prepare(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """-> {"input_ids": int64 [n, context_length]} (longer captions are truncated)."""
        return {"input_ids": self.tokenizer(texts).to(device)}

    def forward(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        out: torch.Tensor = self.model(prepared["input_ids"])
        return out


class OpenCLIPTextTower(TextTower):
    """The text side of a whole open_clip model (contrastkit.training.encoders.pretrained_clip),
    sharing its parameters: training this tower trains the model's own text modules in place.

    open_clip.CLIP keeps its text modules at the top level (token_embedding, transformer,
    ln_final, positional_embedding, text_projection); CustomTextCLIP keeps them in
    `.text`. Either way they are registered here, and the forward is the model's own
    encode_text, so nothing of open_clip's text logic is restated.
    """

    TOP_LEVEL = ("token_embedding", "positional_embedding", "transformer", "ln_final",
                 "text_projection")  # fmt: skip

    def __init__(self, model: nn.Module, tokenizer: Any, out_dim: int, context_length: int):
        super().__init__()
        object.__setattr__(self, "_model", model)  # not a submodule: no duplicate weights
        self.tokenizer = tokenizer
        self.width = self.out_dim = out_dim
        self.context_length = context_length
        text = getattr(model, "text", None)
        if isinstance(text, nn.Module):
            self.text = text
            return
        for name in self.TOP_LEVEL:
            part = getattr(model, name, None)
            if isinstance(part, nn.Parameter):
                self.register_parameter(name, part)
            elif isinstance(part, nn.Module):
                self.add_module(name, part)

    def prepare(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """-> {"input_ids": int64 [n, context_length]} (open_clip's tokenizer truncates)."""
        return {"input_ids": self.tokenizer(texts).to(device)}

    def forward(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> float [n, out_dim], open_clip's encode_text (not normalised)."""
        tokens = prepared["input_ids"]
        model: Any = self._model
        mask = getattr(model, "attn_mask", None)
        if isinstance(mask, torch.Tensor) and mask.device != tokens.device:
            # the causal mask is a buffer of the model, which only the shared
            # parameters followed to the device
            model.attn_mask = mask.to(tokens.device)
        out: torch.Tensor = model.encode_text(tokens)
        return out


class MiniLMTower(TextTower):
    """The packaged MiniLM, locked (cached embeddings) or trained, + projection to out_dim.

    No projection when locked and out_dim == 384: then the text side of the trained model
    is exactly the built-in MiniLM, which the service can run as is.
    """

    def __init__(self, out_dim: int, lock: bool = True, minilm: MiniLM | None = None):
        super().__init__()
        self.minilm = minilm or MiniLM()
        self.lock = lock
        self.width, self.out_dim = MiniLM.dim, out_dim
        if lock:
            self.minilm.requires_grad_(False)
        else:
            self.minilm.requires_grad_(True)
            # mean pooling never uses BERT's pooler; a parameter without a gradient
            # would make DDP fail (unused parameters), so freeze it
            pooler = getattr(self.minilm.model, "pooler", None)
            if pooler is not None:
                pooler.requires_grad_(False)
        self.proj: nn.Module = (
            nn.Identity() if lock and out_dim == MiniLM.dim else nn.Linear(MiniLM.dim, out_dim)
        )
        self.minilm.eval()
        # caption -> row of `_bank` (float [capacity, 384]); not in the state dict: derived
        self._rows: dict[str, int] = {}
        self._bank: torch.Tensor | None = None
        self.cache_hits = 0
        self.cache_misses = 0

    def train(self, mode: bool = True) -> MiniLMTower:
        """A locked tower stays in eval mode (no dropout): it must be a fixed function."""
        super().train(mode)
        if self.lock:
            self.minilm.eval()
        return self

    def prepare(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """Locked: {"embeddings": float [n, 384]}; trained: {"input_ids", "attention_mask"}."""
        if not self.lock:
            enc = self.minilm.tokenize(texts, device)
            return {k: enc[k] for k in ("input_ids", "attention_mask")}
        return {"embeddings": self._cached(texts, device)}

    def forward(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        if "embeddings" in prepared:
            return self.proj(prepared["embeddings"])  # type: ignore[no-any-return]
        hidden = self.minilm.model(**prepared).last_hidden_state  # [n, tokens, 384]
        mask = prepared["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.proj(pooled)  # type: ignore[no-any-return]

    # -- the frozen-embedding cache --------------------------------------------------------
    @torch.no_grad()
    def _cached(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """n captions -> float32 [n, 384] frozen embeddings; each distinct string is run
        through MiniLM once (captions built from class names repeat every batch)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._rows]
        self.cache_misses += len(missing)
        self.cache_hits += len(texts) - len(missing)
        if len(self._rows) + len(missing) > CACHE_ROWS:
            self._rows.clear()  # bounded memory: start over rather than grow without end
            missing = list(dict.fromkeys(texts))
        if missing:
            self._store(missing, self._embed(missing))
        assert self._bank is not None
        if self._bank.device != device:
            self._bank = self._bank.to(device)
        rows = torch.tensor([self._rows[t] for t in texts], device=device)
        return self._bank[rows]

    def _embed(self, texts: list[str]) -> torch.Tensor:
        was_training = self.minilm.training
        self.minilm.eval()
        chunks = [
            self.minilm(texts[i : i + _EMBED_CHUNK]).float()
            for i in range(0, len(texts), _EMBED_CHUNK)
        ]
        self.minilm.train(was_training)
        return torch.cat(chunks)

    def _store(self, texts: list[str], embeddings: torch.Tensor) -> None:
        start = len(self._rows)
        need = start + len(texts)
        bank = self._bank
        if bank is None or bank.shape[0] < need or bank.device != embeddings.device:
            # grow by doubling: amortised O(1) copies per cached caption
            capacity = max(1024, need, 2 * (bank.shape[0] if bank is not None else 0))
            grown = embeddings.new_zeros(min(capacity, max(CACHE_ROWS, need)), MiniLM.dim)
            if bank is not None and start:
                grown[:start] = bank[:start].to(grown.device)
            bank = grown
        bank[start:need] = embeddings
        self._bank = bank
        self._rows.update({t: start + i for i, t in enumerate(texts)})


def build_text_tower(
    kind: str,
    embed_dim: int,
    *,
    lock: bool = True,
    width: int = 256,
    layers: int = 4,
    heads: int = 4,
    context_length: int = 32,
) -> TextTower:
    """kind "minilm" | "transformer"; embed_dim 0 means the tower's own width."""
    if kind == "minilm":
        return MiniLMTower(embed_dim or MiniLM.dim, lock=lock)
    if kind == "transformer":
        return TransformerTower(width, layers, heads, context_length, embed_dim or width)
    raise ValueError(f"text_tower must be 'minilm' or 'transformer', got {kind!r}")
