"""A whole pretrained image-text model to fine-tune (`--init-from open_clip:...`).

References (`--init-from`):
    open_clip:ARCH                 the architecture with random weights (tests, smoke runs)
    open_clip:ARCH:TAG             an open_clip pretrained tag (downloaded by open_clip)
    open_clip:ARCH:FILE            a local weights file (.safetensors, or a torch state dict
                                   read with weights_only=True)
    open_clip:hf-hub:ORG/NAME      a Hugging Face Hub model (config and weights downloaded)
    open_clip:local-dir:DIR        a folder with open_clip_config.json and its weights
    EXPORT_DIR                     an export directory of family open_clip (ours or not)

Both towers, the tokenizer, the logit scale (and bias, for SigLIP models) and the model's
own preprocessing (input size, mean and std) come from the model. The run keeps the
open_clip model object itself (`StartModel.model`): the CLIP method registers its image
tower as the backbone and its text modules as the text tower, sharing the very same
parameters, so the model is trained in place and exported as an open_clip model.

A checkpoint records `StartModel.description` (the reference and the architecture as
data), so resuming, exporting or evaluating a run rebuilds the same model without the
pretrained file or a download; the checkpoint's weights then replace the random ones.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastkit.training.encoders.base import Preprocess

log = logging.getLogger("contrastive.train")

PREFIX = "open_clip:"
SCHEMAS = ("hf-hub:", "local-dir:")  # open_clip's own schemes: config and weights together


@dataclass
class StartModel:
    """An open_clip model to fine-tune, with what is needed to rebuild and serve it.

    description: JSON-able {"reference", "name", "model_cfg", "tokenizer", "preprocess"}.
    """

    model: nn.Module
    tokenizer: Any
    description: dict[str, Any]

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.description["preprocess"])

    @property
    def visual(self) -> nn.Module:
        """The image tower (projection included): [n, 3, S, S] -> [n, embed_dim]."""
        tower = self.model.visual
        assert isinstance(tower, nn.Module)
        return tower

    @property
    def embed_dim(self) -> int:
        return int(self.description["model_cfg"]["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.description["tokenizer"]["context_length"])


def is_clip_start(ref: str | None) -> bool:
    """True when `ref` names a whole open_clip model (not backbone weights only)."""
    if not ref:
        return False
    if ref.startswith(PREFIX):
        return True
    return _export_family(Path(ref)) == "open_clip"


def _export_family(path: Path) -> str | None:
    from contrastkit.training.encoders.exported.format import META_FILE

    meta = path / META_FILE
    if not meta.is_file():
        return None
    import json

    try:
        raw = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None  # reported as a bad export by whoever reads it
    return raw.get("family") if isinstance(raw, dict) else None


def load_start(ref: str) -> StartModel:
    """`--init-from` reference -> the pretrained model (ValueError when it cannot be had)."""
    if not ref.startswith(PREFIX):
        return _from_export(Path(ref))
    name, _, weights = ref.removeprefix(PREFIX).partition(":")
    if name in ("hf-hub", "local-dir"):  # the scheme's own ':' is part of the name
        name, weights = f"{name}:{weights}", ""
    return _from_open_clip(ref, name, weights or None)


def rebuild_start(description: dict[str, Any]) -> StartModel:
    """The architecture a checkpoint recorded, with random weights (the caller loads them)."""
    from contrastkit.training.encoders.openclip import build_model, make_tokenizer

    model = build_model(description["model_cfg"])
    return StartModel(model, make_tokenizer(description["tokenizer"]), dict(description))


def _from_open_clip(ref: str, name: str, weights: str | None) -> StartModel:
    import open_clip

    from contrastkit.training.encoders.openclip import load_state_file

    if not name.startswith(SCHEMAS) and name not in open_clip.list_models():
        raise ValueError(f"--init-from {ref}: unknown open_clip architecture {name!r}; "
                         "see open_clip.list_models()")  # fmt: skip
    folder = name.removeprefix("local-dir:") if name.startswith("local-dir:") else None
    if folder is not None and not (Path(folder) / "open_clip_config.json").is_file():
        raise ValueError(f"--init-from {ref}: no open_clip_config.json in {folder} "
                         "(a local-dir model is a folder of it and the weights)")  # fmt: skip
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"--init-from {ref}: open_clip has no config for {name!r}")
    tag = None if weights is None or Path(weights).is_file() else weights
    if tag and (open_clip.get_pretrained_cfg(name, tag) or {}).get("quick_gelu"):
        cfg["quick_gelu"] = True  # as open_clip does for weights trained with QuickGELU
    try:
        with _quiet_root_logger():
            model = open_clip.create_model(name, pretrained=tag)
            tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, OSError) as e:  # a tag or folder open_clip cannot fetch
        raise ValueError(f"--init-from {ref}: open_clip could not load it: {e}") from e
    if weights is not None and tag is None:
        _load(model, load_state_file(Path(weights)), ref)
    return _start(model, tokenizer, ref, name, cfg)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip narrates every load on the root logger at INFO; the run's own line says
    what was loaded, so keep only its warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _from_export(path: Path) -> StartModel:
    from contrastkit.training.encoders.exported.format import read_export
    from contrastkit.training.encoders.openclip import build_model, make_tokenizer

    meta, state = read_export(path)
    if meta.family != "open_clip":
        raise ValueError(f"--init-from {path}: an export of family {meta.family!r}, "
                         "not an open_clip model")  # fmt: skip
    cfg = meta.architecture["model_cfg"]
    model = build_model(cfg)
    _load(model, state, str(path))
    tokenizer_spec = dict(meta.tokenizer or {"kind": "open_clip", "context_length": 77})
    name = meta.architecture.get("name")
    # the export's own tokenizer entry wins, as when it is served (exported.load): ours
    # names no source for CLIP's tokenizer, and the architecture's name may be a folder
    # (local-dir:DIR) that is long gone
    tokenizer = make_tokenizer({"name": name} | tokenizer_spec)
    start = _start(model, tokenizer, str(path), name, cfg)
    start.description["preprocess"] = dict(meta.preprocess)
    return start


def _load(model: nn.Module, state: dict[str, torch.Tensor], ref: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"--init-from {ref}: the weights do not fit the architecture: {e}") from e


def _start(
    model: nn.Module, tokenizer: Any, ref: str, name: str | None, cfg: dict[str, Any]
) -> StartModel:
    from open_clip import SimpleTokenizer

    from contrastkit.training.encoders.openclip import openclip_preprocess

    context = int(getattr(model, "context_length", 0) or cfg["text_cfg"].get("context_length", 77))
    # CLIP's byte-pair tokenizer ships with open_clip: name no source for it, so an export
    # never depends on the folder or Hub repository the run started from
    source = None if isinstance(tokenizer, SimpleTokenizer) else name
    description = {
        "reference": ref,
        "name": name,
        "model_cfg": cfg,
        "tokenizer": {"kind": "open_clip", "name": source, "context_length": context},
        "preprocess": openclip_preprocess(model).to_dict(),
    }
    n = sum(p.numel() for p in model.parameters())
    log.info("starting from %s: %s, %.1fM parameters, both towers", ref, name, n / 1e6)
    return StartModel(model, tokenizer, description)
