"""`--model REF` -> Encoder, for every kind of model evaluation accepts.

builtin, open_clip:ARCH, an export directory
    -> contrastkit.training.encoders.load_encoder
a training checkpoint file, or a run folder (one holding last.pt but no encoder.json)
    -> contrastkit.training.export.build.encoder_from_checkpoint
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from contrastkit.training.encoders import Encoder, load_encoder
from contrastkit.training.engine.checkpoint import LAST

CheckpointLoader = Callable[[Path, str | None], Encoder]


def is_checkpoint_ref(ref: str) -> bool:
    """A file (last.pt, step-100.pt, ...), or a run folder with last.pt and no export."""
    path = Path(ref).expanduser()
    if path.is_file():
        return True
    return path.is_dir() and (path / LAST).is_file() and not (path / "encoder.json").exists()


def default_checkpoint_loader() -> CheckpointLoader:
    """contrastkit.training.export.build's `encoder_from_checkpoint(path, device)`."""
    from contrastkit.training.export.build import encoder_from_checkpoint

    return encoder_from_checkpoint


def resolve_model(
    ref: str,
    pretrained: str | None = None,
    device: str | None = None,
    checkpoint_loader: CheckpointLoader | None = None,
) -> Encoder:
    """Model reference -> Encoder on `device` (None/"auto": CUDA when present).

    Raises UnknownModelError for a reference that names nothing loadable.
    """
    if is_checkpoint_ref(ref):
        loader = checkpoint_loader or default_checkpoint_loader()
        return loader(Path(ref).expanduser(), device)
    return load_encoder(ref, pretrained=pretrained, device=device)
