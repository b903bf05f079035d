"""The export directory: the one format that carries an encoder from contrastkit.training to
serving.

    OUT_DIR/
      encoder.json          what to build and how to feed it (see `ExportMeta`)
      weights.safetensors   the weights; its sha256 is recorded in encoder.json

Loading never unpickles: weights are read with safetensors only, after their hash has
been checked, so a tampered or foreign file is refused before any of it is parsed.
Writing is atomic: the directory is assembled under a temporary name and renamed.

From a training run: `contrastkit.training.export.build.export_checkpoint` writes one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
META_FILE = "encoder.json"
WEIGHTS_FILE = "weights.safetensors"
FAMILIES = ("open_clip", "timm", "trained", "trained_clip")
TRAINED_FAMILIES = ("trained", "trained_clip")  # our own runs (exported/trained.py)


class ExportError(ValueError):
    """An export directory is missing, malformed, tampered with, or of an unknown kind."""


@dataclass
class ExportMeta:
    """The contents of encoder.json.

    family: "open_clip" (architecture = {"model_cfg": open_clip model config}),
        "timm" (architecture = {"name": timm model name, "kwargs": {...}}), or one of
        our training runs: "trained" (image-only methods: backbone, optionally with the
        projector) and "trained_clip" (CLIP: image tower + text tower), architecture =
        {"name", "backbone": BackboneSpec fields, "feat_dim", "head": layer list or None,
        "text": text tower config (trained_clip)} - see training/encoders/exported/trained.py.
    preprocess: contrastkit.training.encoders.base.Preprocess as a dict (size, mean, std, ...).
    tokenizer: {"kind": "open_clip", "context_length": 77}, {"kind": "minilm", ...} (the
        packaged MiniLM's own tokenizer), or None for image-only.
    method: for our runs, the training method's `--method` name (contrastkit.training.catalog lists
    them). training: run metadata (step, epoch, data, config, checkpoint sha256...). templates:
    default zero-shot prompt templates (CLIP: those it trained with), or None.
    """

    family: str
    architecture: dict[str, Any]
    preprocess: dict[str, Any]
    embed_dim: int
    capabilities: list[str]
    logit_scale: float = 100.0
    tokenizer: dict[str, Any] | None = None
    method: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    templates: list[str] | None = None
    format_version: int = FORMAT_VERSION
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ExportMeta:
        if not isinstance(raw, dict):
            raise ExportError(f"{META_FILE} must hold a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ExportError(
                f"{META_FILE} has format_version {version!r}; this version reads {FORMAT_VERSION}"
            )
        known = {f for f in cls.__dataclass_fields__}
        missing = {"family", "architecture", "preprocess", "embed_dim", "capabilities"} - set(raw)
        if missing:
            raise ExportError(f"{META_FILE} lacks {sorted(missing)}")
        meta = cls(**{k: v for k, v in raw.items() if k in known})
        if meta.family not in FAMILIES:
            raise ExportError(f"unknown family {meta.family!r}; expected one of {FAMILIES}")
        if Path(meta.weights_file).name != meta.weights_file:
            raise ExportError("weights_file must be a plain file name inside the export directory")
        return meta


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_export(
    out_dir: str | Path, state_dict: dict[str, torch.Tensor], meta: ExportMeta
) -> Path:
    """Write `state_dict` and `meta` as an export directory at `out_dir` (replaced if present)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        weights = tmp / meta.weights_file
        # safetensors refuses shared storage; contiguous clones make any state dict savable.
        save_file(
            {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}, weights
        )
        meta.weights_sha256 = sha256_file(weights)
        (tmp / META_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n")
        _fsync_dir_files(tmp)
        # mkdtemp makes the folder 0700 and safetensors its file 0600; an export is meant
        # to be shipped (copied into an image, served by another user), so open them up.
        tmp.chmod(0o755)
        for p in tmp.iterdir():
            p.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_meta(path: str | Path) -> ExportMeta:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise ExportError(f"{path} is not an export directory: {META_FILE} not found")
    try:
        raw = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{meta_path} is not valid JSON: {e}") from e
    return ExportMeta.from_json(raw)


def read_export(path: str | Path) -> tuple[ExportMeta, dict[str, torch.Tensor]]:
    """-> (meta, state dict on the CPU); raises ExportError for anything not exactly as written."""
    meta = read_meta(path)
    weights = Path(path) / meta.weights_file
    if not weights.is_file():
        raise ExportError(f"{weights} not found")
    actual = sha256_file(weights)
    if actual != meta.weights_sha256:
        raise ExportError(
            f"{weights} does not match encoder.json (sha256 {actual[:12]}…, expected "
            f"{meta.weights_sha256[:12] or 'none'}…): the file was changed or replaced"
        )
    try:
        return meta, load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{weights} is not a safetensors file: {e}") from e


def _fsync_dir_files(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
