"""Atomic checkpoints that load without unpickling arbitrary objects.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so
`torch.load(weights_only=True)` reads it: a checkpoint from elsewhere cannot run code.
Writing goes to a temporary file in the same folder, is fsynced, then renamed over the
old one (and the folder fsynced), so a crash mid-write leaves the previous checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

LAST = "last.pt"


class CheckpointError(ValueError):
    """The checkpoint is missing, unreadable, or not one of ours."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True` onto the CPU."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a contrastive training checkpoint")
    return state


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """True when every floating tensor holds only finite values (one fused reduction)."""
    floats = [t for t in tensors if t.is_floating_point()]
    if not floats:
        return True
    norms = torch._foreach_norm(floats)
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())
