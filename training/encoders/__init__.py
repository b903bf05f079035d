"""Encoder families behind one interface, chosen by a model reference string.

builtin                     EfficientNet-Lite0 + MiniLM joined by ConSE (offline)
open_clip:ARCH              an open_clip architecture; `pretrained` is a tag, a local
                            file, or None for random weights
open_clip:hf-hub:ORG/NAME   an open_clip model on the Hugging Face Hub (config and
                            weights download on first use; `pretrained` must be None)
open_clip:local-dir:DIR     a folder with open_clip_config.json and its weights (offline)
PATH                        an export directory (contrastkit.training.encoders.exported.format;
                            with runtime="onnx"/"auto": its ONNX graphs, when it has them)
"""

from __future__ import annotations

import re
from pathlib import Path

from contrastkit.training.encoders.base import (
    IMAGE,
    TEXT,
    Encoder,
    EncoderInfo,
    MissingCapabilityError,
    Preprocess,
)
from contrastkit.training.encoders.base import resolve_device as resolve_device

__all__ = [
    "IMAGE",
    "TEXT",
    "Encoder",
    "EncoderInfo",
    "MissingCapabilityError",
    "Preprocess",
    "UnknownModelError",
    "check_reference",
    "hf_hub_repo",
    "load_encoder",
]


class UnknownModelError(ValueError):
    """The model reference names nothing this version can load."""


HF_HUB = "hf-hub:"
# A Hub repository id as the Hub accepts it: ORG/NAME, each part letters, digits, '-', '_'
# and '.', starting and ending with a letter or digit, at most 96 characters in all.
_HF_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_HF_REPO = re.compile(rf"{_HF_PART}/{_HF_PART}")


def hf_hub_repo(name: str) -> str | None:
    """`hf-hub:ORG/NAME` (what follows `open_clip:`) -> "ORG/NAME"; None for any other
    name (an architecture). UnknownModelError for a malformed repository id. Checks the
    shape only: no network, so a typo in an existing-looking id fails at load time."""
    if not name.startswith(HF_HUB):
        return None
    repo = name.removeprefix(HF_HUB)
    if len(repo) > 96 or not _HF_REPO.fullmatch(repo) or ".." in repo or "--" in repo:
        raise UnknownModelError(
            f"bad Hugging Face Hub id {repo!r} in 'open_clip:{name}': use "
            "open_clip:hf-hub:ORG/NAME (letters, digits, '-', '_', '.'; no spaces), "
            "e.g. open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
        )
    return repo


def check_reference(ref: str, device: str | None = None) -> None:
    """Raise UnknownModelError (or ValueError for the device) without loading anything
    (and without the network: an hf-hub reference is checked for its shape only)."""
    resolve_device(device)
    if ref == "builtin" or Path(ref).is_dir():
        return
    if ref.startswith("open_clip:"):
        if hf_hub_repo(ref.split(":", 1)[1]) is not None:
            return
        if ref.startswith(LOCAL_DIR):
            _check_local_dir(ref)
            return
        import open_clip

        if ref.split(":", 1)[1] in open_clip.list_models():
            return
        raise UnknownModelError(
            f"unknown open_clip architecture in {ref!r}; see open_clip.list_models()"
        )
    raise UnknownModelError(_UNKNOWN.format(ref=ref))


LOCAL_DIR = "open_clip:local-dir:"


def _check_local_dir(ref: str) -> None:
    folder = Path(ref.removeprefix(LOCAL_DIR)).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        raise UnknownModelError(
            f"{ref!r}: {folder} holds no open_clip_config.json (open_clip's local-dir "
            "format: that file and the weights, e.g. open_clip_model.safetensors)"
        )


_UNKNOWN = (
    "unknown model {ref!r}: use 'builtin', 'open_clip:ARCH' (e.g. open_clip:ViT-B-32), "
    "'open_clip:hf-hub:ORG/NAME' or the path of an export directory"
)


def load_encoder(
    ref: str, pretrained: str | None = None, device: str | None = None, runtime: str = "torch"
) -> Encoder:
    """Model reference -> ready Encoder on `device` (None: CUDA when present, else CPU).

    runtime: "torch"; "onnx" (an export directory's ONNX files with onnxruntime on the
    CPU); "auto" (onnx where it applies and is the faster one, else torch; see
    contrastkit.training.encoders.exported.onnx_runtime.choose_runtime).
    """
    if runtime != "torch":
        from contrastkit.training.encoders.exported.onnx_runtime import (
            choose_runtime,
            load_onnx_encoder,
        )

        if choose_runtime(ref, runtime, device) == "onnx":
            return load_onnx_encoder(ref)
    dev = resolve_device(device)
    if ref == "builtin":
        from contrastkit.training.encoders.builtin import BuiltinEncoder

        return BuiltinEncoder(dev)
    if ref.startswith(LOCAL_DIR):
        _check_local_dir(ref)
    if ref.startswith("open_clip:"):
        from contrastkit.training.encoders.openclip import from_name

        try:
            return from_name(ref.split(":", 1)[1], pretrained, dev)
        except ValueError as e:
            raise UnknownModelError(str(e)) from e
    if Path(ref).is_dir():
        from contrastkit.training.encoders.exported.load import load_export

        return load_export(ref, dev)
    raise UnknownModelError(_UNKNOWN.format(ref=ref))
