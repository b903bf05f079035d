"""Atomic checkpoints that load without unpickling arbitrary objects.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so
`torch.load(weights_only=True)` reads it: a checkpoint from elsewhere cannot run code.
Writing goes to a temporary file in the same folder, is fsynced, then renamed over the
old one (and the folder fsynced), so a crash mid-write leaves the previous checkpoint.

Each checkpoint carries a sha256 of its contents (every tensor's dtype, shape and bytes,
and every other value), checked on every load: torch.load does not verify the zip's own
CRCs, so without it a flipped byte inside a tensor resumes silently with drifted weights.
A mismatch is refused (the file is left as it is); a checkpoint written before checksums
loads with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

LAST = "last.pt"
CHECKSUM = "checksum"  # {"algorithm": "sha256", "digest": hex} beside the state's keys

log = logging.getLogger("contrastive.checkpoint")


class CheckpointError(ValueError):
    """The checkpoint is missing, unreadable, or not one of ours."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, CHECKSUM: {"algorithm": "sha256", "digest": state_digest(state)}}
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
    verify(path, state)
    return state


def verify(path: Path, state: dict[str, Any]) -> None:
    """Check (and remove) the checksum written with `state`; raise CheckpointError on a
    mismatch. The file is not touched: damage is reported, never repaired."""
    saved = state.pop(CHECKSUM, None)
    if saved is None:
        log.warning("%s was written without a checksum (an older version): not verified", path)
        return
    digest = saved.get("digest") if isinstance(saved, dict) else None
    if not isinstance(digest, str) or saved.get("algorithm") != "sha256":
        raise CheckpointError(f"{path} has an unreadable checksum entry {saved!r}")
    actual = state_digest(state)
    if actual != digest:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its contents do not match the sha256 written "
            f"with it (saved {digest[:16]}..., now {actual[:16]}...). The file is kept as it "
            "is; restore it from a copy, or start afresh in another --out."
        )


def state_digest(state: dict[str, Any]) -> str:
    """sha256 (hex) over a checkpoint's contents, key order and device independent."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != CHECKSUM})
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    """Hash `obj` with its structure: a tag, then the contents."""
    if isinstance(obj, torch.Tensor):
        flat = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(flat.view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):  # a tuple may come back as a list: the same here
        h.update(b"L%d" % len(obj))
        for item in obj:
            _feed(h, item)
    else:  # numbers, strings, bools, None: repr is exact (floats round-trip)
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """True when every floating tensor holds only finite values (one fused reduction)."""
    floats = [t for t in tensors if t.is_floating_point()]
    if not floats:
        return True
    norms = torch._foreach_norm(floats)
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())
