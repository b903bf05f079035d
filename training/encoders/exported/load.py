"""Encoders rebuilt from an export directory (contrastkit.training.encoders.exported.format)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from contrastkit.training.encoders.base import IMAGE, Encoder, EncoderInfo, Preprocess
from contrastkit.training.encoders.exported.format import (
    TRAINED_FAMILIES,
    ExportError,
    ExportMeta,
    read_export,
)
from contrastkit.training.encoders.openclip import OpenCLIPEncoder, build_model, make_tokenizer
from contrastkit.training.encoders.templates import DEFAULT_TEMPLATES


class TimmEncoder(Encoder):
    """An image-only backbone (timm, pooled features) from a training run."""

    def __init__(
        self, model: torch.nn.Module, meta: ExportMeta, model_id: str, device: torch.device
    ):
        self.device = device
        self.model = model.to(device).eval()
        self.info = EncoderInfo(
            model_id=model_id,
            embed_dim=meta.embed_dim,
            capabilities=frozenset({IMAGE}),
            logit_scale=float(meta.logit_scale),
            preprocess=Preprocess.from_dict(meta.preprocess),
            default_templates=DEFAULT_TEMPLATES,
        )

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)  # type: ignore[no-any-return]


def load_export(path: str | Path, device: torch.device) -> Encoder:
    """Export directory -> Encoder; raises ExportError on a bad or tampered directory."""
    meta, state = read_export(path)
    model_id = f"export:{meta.family}:{_arch_name(meta)}:{meta.weights_sha256[:12]}"
    if meta.family in TRAINED_FAMILIES:
        from contrastkit.training.encoders.exported.trained import load_trained

        return load_trained(meta, state, model_id, device)
    if meta.family == "timm":
        arch = meta.architecture
        model = timm.create_model(
            arch["name"], pretrained=False, num_classes=0, **arch.get("kwargs", {})
        )
        _load(model, state)
        return TimmEncoder(model, meta, model_id, device)
    return load_open_clip(meta, state, model_id, device)


def load_open_clip(
    meta: ExportMeta, state: dict[str, torch.Tensor], model_id: str, device: torch.device
) -> OpenCLIPEncoder:
    """An open_clip export (ours from a fine-tuning run, or any model's) -> Encoder with
    the export's preprocessing, tokenizer and prompt templates."""
    model = build_model(meta.architecture["model_cfg"])
    _load(model, state)
    spec = {"context_length": 77, "name": meta.architecture.get("name")} | (meta.tokenizer or {})
    enc = OpenCLIPEncoder(model, make_tokenizer(spec), model_id, device)
    enc.info.preprocess = Preprocess.from_dict(meta.preprocess)
    if meta.templates:
        enc.info.default_templates = tuple(meta.templates)
    return enc


def _arch_name(meta: ExportMeta) -> str:
    return str(meta.architecture.get("name", meta.method or meta.family))


def _load(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ExportError(f"weights do not fit the architecture in encoder.json: {e}") from e
