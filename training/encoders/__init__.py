"""Encoder families behind one interface, chosen by a model reference string.

builtin                     EfficientNet-Lite0 + MiniLM joined by ConSE (offline)
open_clip:ARCH              an open_clip architecture; `pretrained` is a tag, a local
                            file, or None for random weights
PATH                        an export directory written by training.encoders.exported.format (with
                            runtime="onnx"/"auto": its ONNX graphs, when it has them)
"""

from __future__ import annotations

from pathlib import Path

from training.encoders.base import (
    IMAGE,
    TEXT,
    Encoder,
    EncoderInfo,
    MissingCapabilityError,
    Preprocess,
)
from training.encoders.base import resolve_device as resolve_device

__all__ = [
    "IMAGE",
    "TEXT",
    "Encoder",
    "EncoderInfo",
    "MissingCapabilityError",
    "Preprocess",
    "UnknownModelError",
    "check_reference",
    "load_encoder",
]


class UnknownModelError(ValueError):
    """The model reference names nothing this version can load."""


def check_reference(ref: str, device: str | None = None) -> None:
    """Raise UnknownModelError (or ValueError for the device) without loading anything."""
    resolve_device(device)
    if ref == "builtin" or Path(ref).is_dir():
        return
    if ref.startswith("open_clip:"):
        import open_clip

        if ref.split(":", 1)[1] in open_clip.list_models():
            return
        raise UnknownModelError(
            f"unknown open_clip architecture in {ref!r}; see open_clip.list_models()"
        )
    raise UnknownModelError(_UNKNOWN.format(ref=ref))


_UNKNOWN = (
    "unknown model {ref!r}: use 'builtin', 'open_clip:ARCH' (e.g. open_clip:ViT-B-32) "
    "or the path of an export directory"
)


def load_encoder(
    ref: str, pretrained: str | None = None, device: str | None = None, runtime: str = "torch"
) -> Encoder:
    """Model reference -> ready Encoder on `device` (None: CUDA when present, else CPU).

    runtime: "torch"; "onnx" (an export directory's ONNX files with onnxruntime on the
    CPU); "auto" (onnx where it applies and is the faster one, else torch; see
    training.encoders.exported.onnx_runtime.choose_runtime).
    """
    if runtime != "torch":
        from training.encoders.exported.onnx_runtime import choose_runtime, load_onnx_encoder

        if choose_runtime(ref, runtime, device) == "onnx":
            return load_onnx_encoder(ref)
    dev = resolve_device(device)
    if ref == "builtin":
        from training.encoders.builtin import BuiltinEncoder

        return BuiltinEncoder(dev)
    if ref.startswith("open_clip:"):
        from training.encoders.openclip import from_name

        try:
            return from_name(ref.split(":", 1)[1], pretrained, dev)
        except ValueError as e:
            raise UnknownModelError(str(e)) from e
    if Path(ref).is_dir():
        from training.encoders.exported.load import load_export

        return load_export(ref, dev)
    raise UnknownModelError(_UNKNOWN.format(ref=ref))
