"""open_clip models: by architecture name (+ pretrained tag or local file) or from an export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import load_file

from contrastkit.training.encoders.base import IMAGE, TEXT, Encoder, EncoderInfo, Preprocess
from contrastkit.training.encoders.exported.format import sha256_file
from contrastkit.training.encoders.templates import DEFAULT_TEMPLATES


class OpenCLIPEncoder(Encoder):
    """Wraps any open_clip CLIP-like model: image and text towers, shared space."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, model_id: str, device: torch.device
    ) -> None:
        self.device = device
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        preprocess = openclip_preprocess(model)
        with torch.no_grad():
            logit_scale = float(model.logit_scale.exp().clamp(max=100.0))  # type: ignore[union-attr,operator]
        self.info = EncoderInfo(
            model_id=model_id,
            embed_dim=_probe_dim(self.model, preprocess.size, device),
            capabilities=frozenset({IMAGE, TEXT}),
            logit_scale=logit_scale,
            preprocess=preprocess,
            context_length=int(getattr(model, "context_length", 77)),
            default_templates=DEFAULT_TEMPLATES,
        )

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)  # type: ignore[operator,no-any-return]

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)  # truncates to the context length
        return self.model.encode_text(tokens)  # type: ignore[operator,no-any-return]


def openclip_preprocess(model: torch.nn.Module) -> Preprocess:
    """The model's own input: its image size, and the mean/std its weights were trained
    with (open_clip sets them on the image tower; OpenAI's when it does not)."""
    visual: Any = model.visual
    size = visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return Preprocess(size=int(size), mean=tuple(mean), std=tuple(std))  # type: ignore[arg-type]


@torch.no_grad()
def _probe_dim(model: torch.nn.Module, size: int, device: torch.device) -> int:
    out = model.encode_image(torch.zeros(1, 3, size, size, device=device))  # type: ignore[operator]
    return int(out.shape[-1])


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A local checkpoint -> state dict, without unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        state: Any = load_file(path, device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    # checkpoints saved from DDP carry a "module." prefix
    return {k.removeprefix("module."): v for k, v in state.items()}


def from_name(arch: str, pretrained: str | None, device: torch.device) -> OpenCLIPEncoder:
    """`open_clip:ARCH` with a pretrained tag (downloads), a local file, or random weights;
    or `open_clip:hf-hub:ORG/NAME`, whose config and weights come from the Hub."""
    from contrastkit.training.encoders import hf_hub_repo

    # UnknownModelError is a ValueError: load_encoder reports it as a bad reference
    if hf_hub_repo(arch) is not None or arch.startswith("local-dir:"):
        return _from_hf_hub(arch, pretrained, device)
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    tokenizer = open_clip.get_tokenizer(arch)
    if pretrained in (None, "", "none", "random"):
        torch.manual_seed(0)  # random weights, but the same ones every time: a stable space
        model = open_clip.create_model(arch, pretrained=None)
        tag = "random-seed0"
    elif Path(pretrained).is_file():
        model = open_clip.create_model(arch, pretrained=None)
        model.load_state_dict(load_state_file(Path(pretrained)))
        tag = "file-" + sha256_file(Path(pretrained))[:12]
    else:
        model = open_clip.create_model(arch, pretrained=pretrained)
        tag = pretrained
    return OpenCLIPEncoder(model, tokenizer, f"open_clip:{arch}:{tag}", device)


def _from_hf_hub(name: str, pretrained: str | None, device: torch.device) -> OpenCLIPEncoder:
    """`hf-hub:ORG/NAME` (or `local-dir:DIR`) as open_clip reads it: the repository's
    open_clip_config.json and weights (downloaded once into the Hugging Face cache;
    offline, the cache must hold them). The repository names its weights, so there is
    no pretrained tag to add."""
    if pretrained not in (None, ""):
        raise ValueError(
            f"{name!r} brings its own weights from the Hub: drop pretrained={pretrained!r}"
        )
    # pretrained=None: open_clip ignores a tag for hf-hub names; None says so plainly
    model = open_clip.create_model(name, pretrained=None)
    tokenizer = open_clip.get_tokenizer(name)
    return OpenCLIPEncoder(model, tokenizer, f"open_clip:{name}", device)


def build_model(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """An open_clip model from its config dict (architecture as data, as in an export)."""
    cfg = dict(model_cfg)
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    return cls(**cfg)  # type: ignore[no-any-return]


def make_tokenizer(spec: dict[str, Any]) -> Any:
    """{"kind": "open_clip", "name": ARCH or None, "context_length": n} -> a tokenizer.

    open_clip's own choice for the architecture when it names one (SigLIP models use a
    Hugging Face tokenizer), else CLIP's byte-pair tokenizer at the context length."""
    name = spec.get("name")
    known = name and (name in open_clip.list_models() or name.startswith(("hf-hub:", "local-dir:")))
    if known:
        return open_clip.get_tokenizer(name)
    return open_clip.SimpleTokenizer(context_length=int(spec.get("context_length", 77)))
