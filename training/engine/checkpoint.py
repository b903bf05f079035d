"""The training checkpoint: its schema (`Checkpoint`), and atomic files that load
without unpickling arbitrary objects.

`Checkpoint` is the one definition of what a checkpoint holds; everything that reads
one (resume, export, eval, the demo) reads its fields, never the file's keys. Its
`format` is checked on every load: a checkpoint from a newer format is refused with a
message naming both versions, since this version cannot know what the newer keys mean.

On disk a checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so
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

import dataclasses
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from contrastkit.training.encoders.nets.backbones import BackboneSpec

LAST = "last.pt"
CHECKSUM = "checksum"  # {"algorithm": "sha256", "digest": hex} beside the state's keys
# The schema's version, written into every checkpoint. Bump it when a key changes meaning
# or a new key is needed to resume; older formats stay readable, newer ones are refused.
CHECKPOINT_FORMAT = 1

log = logging.getLogger("contrastive.checkpoint")


class CheckpointError(ValueError):
    """The checkpoint is missing, unreadable, or not one of ours."""


@dataclass
class Checkpoint:
    """Everything a run saves: enough to resume it exactly, and to export its model.

    method: the method's registry name; config: TrainConfig.to_dict() (method_params in
    it); model: the Method's state_dict; backbone, feat_dim: how to rebuild the backbone
    (None in checkpoints of early versions, which cannot be exported); optimizer, scaler:
    their state_dicts; step, epoch, step_in_epoch: where the run stands (the next batch is
    `step_in_epoch` of `epoch`); rng: every random stream (contrastkit.training.engine.runstate);
    world_size: the processes that trained it.
    """

    method: str
    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    train_seconds: float = 0.0
    world_size: int = 1
    backbone: BackboneSpec | None = None
    feat_dim: int | None = None
    optimizer: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    format: int = CHECKPOINT_FORMAT
    # a run fine-tuning a whole pretrained model: how to rebuild it (clip_start.StartModel)
    start: dict[str, Any] | None = None

    def to_state(self) -> dict[str, Any]:
        """The dict written to disk (tensors, numbers, strings, lists and dicts only)."""
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        backbone = state.pop("backbone")
        feat_dim = state.pop("feat_dim")
        if backbone is not None:
            state["backbone"] = dataclasses.asdict(backbone) | {"feat_dim": feat_dim}
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], path: Path) -> Checkpoint:
        """The dict `to_state` wrote (checksum removed) -> Checkpoint; CheckpointError
        when it is not one of ours or comes from a newer format."""
        fmt = state.get("format", 1)  # format 1 is the first that was ever written
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
            raise CheckpointError(f"{path} has an unreadable checkpoint format {fmt!r}")
        if fmt > CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} is a checkpoint of format {fmt}, written by a newer version of "
                f"contrastive; this version reads formats up to {CHECKPOINT_FORMAT}. "
                "Upgrade contrastive to resume, export or evaluate it."
            )
        config, model = state.get("config"), state.get("model")
        if not isinstance(config, dict) or not isinstance(model, dict):
            raise CheckpointError(f"{path} is not a contrastive training checkpoint")
        backbone = state.get("backbone")
        try:
            return cls(
                method=str(state.get("method", config.get("method", ""))),
                config=config,
                model=model,
                step=int(state.get("step", 0)),
                epoch=int(state.get("epoch", 0)),
                step_in_epoch=int(state.get("step_in_epoch", 0)),
                train_seconds=float(state.get("train_seconds", 0.0)),
                world_size=int(state.get("world_size", 1)),
                backbone=_backbone_spec(backbone) if backbone is not None else None,
                feat_dim=int(backbone["feat_dim"]) if backbone is not None else None,
                optimizer=dict(state.get("optimizer") or {}),
                scaler=dict(state.get("scaler") or {}),
                rng=dict(state.get("rng") or {}),
                format=fmt,
                start=dict(state["start"]) if state.get("start") else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path} holds a malformed checkpoint entry: {e}") from e


def _backbone_spec(saved: dict[str, Any]) -> BackboneSpec:
    # imported here: the model library pulls in torchvision, which `contrastive train
    # --help` (this module's importer) does not need
    from contrastkit.training.encoders.nets.backbones import BackboneSpec

    return BackboneSpec(str(saved["name"]), bool(saved.get("cifar_stem")), saved.get("image_size"))


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write `checkpoint` to `path` atomically, with its checksum; returns the path."""
    return write_state(path, checkpoint.to_state())


def write_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a checkpoint's dict to `path` atomically, with its checksum; returns the path."""
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


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file (or a run folder's last.pt) onto the CPU: checksum verified,
    format checked. CheckpointError says why one cannot be used."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    return Checkpoint.from_state(read_state(path), path)


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint file's dict, read with `weights_only=True` and its checksum verified
    (and removed)."""
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
