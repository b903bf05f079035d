"""ONNX graphs of a loaded torch encoder, traced once and kept in a cache folder.

The service's `runtime=auto` serves a CPU model with torch at once, then asks for this
(contrastkit.service.runtime.onnx_upgrade): a cache hit opens the graphs in about a second, a miss
traces them (a minute for ViT-B/32 on 2 cores) and keeps them for the next start.

One folder per weights, named `<model id>-<key>`:

    key = sha256(model id, this package's version, torch's version,
                 every parameter, buffer and tensor attribute of the encoder, by name)

so a different checkpoint, a random initialisation, or an upgrade of the code that traces
the graphs never meets another's graphs. The folder is an ordinary ONNX set (onnx.json
with each graph's sha256, see contrastkit.training.encoders.exported.onnx_runtime), written under a
temporary name and renamed into place, so a crash or a second server building the same
key leaves either nothing or a whole set. Every open re-checks the graphs against the
torch encoder they replace (check_parity: max abs difference of unit vectors <= 1e-4), so
the served vectors are the torch encoder's, to that tolerance, whatever the cache holds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from importlib import metadata
from pathlib import Path

import torch

from contrastkit.training.encoders.base import Encoder
from contrastkit.training.encoders.exported.format import ExportError
from contrastkit.training.encoders.exported.onnx_runtime import (
    MANIFEST_FILE,
    Manifest,
    OnnxEncoder,
    open_graphs,
    read_manifest,
)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/contrastive/onnx, else ~/.cache/contrastive/onnx."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "contrastive" / "onnx"


def weights_key(encoder: Encoder) -> str:
    """sha256 hex of what the graphs depend on (see the module docstring)."""
    h = hashlib.sha256()
    for part in (encoder.model_id, _version(), torch.__version__):
        h.update(part.encode() + b"\0")
    for name, tensor in sorted(_tensors(encoder).items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cached_onnx(encoder: Encoder, cache_dir: Path, threads: int | None = None) -> OnnxEncoder:
    """The encoder's graphs from `cache_dir`, traced there first when missing -> OnnxEncoder.

    Raises ExportError / OnnxParityError when the graphs cannot be made or disagree with
    `encoder` (a cached set that fails its hashes or the parity check is moved aside as
    `<folder>.damaged` and traced again, once)."""
    from contrastkit.training.export import onnx as export  # late: tests count its traces

    key = weights_key(encoder)
    folder = cache_dir / f"{_safe(encoder.model_id)}-{key[:20]}"
    if (folder / MANIFEST_FILE).is_file():
        try:
            onnx = open_graphs(folder, _manifest(folder, key), threads)
            export.check_parity(encoder, onnx)
            return onnx
        except Exception as e:  # a damaged set: keep it for a look, trace a new one
            _set_aside(folder, e)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        export.export_graphs(encoder, tmp, weights_sha256=key)  # parity-checked there
        _publish(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_graphs(folder, _manifest(folder, key), threads)


def _manifest(folder: Path, key: str) -> Manifest:
    manifest = read_manifest(folder)
    if manifest.weights_sha256 != key:
        raise ExportError(f"{folder}/{MANIFEST_FILE} was made for other weights")
    return manifest


def _publish(tmp: Path, folder: Path) -> None:
    """Rename the traced set into place; another process may have published it first
    (then theirs stays: it was made from the same weights)."""
    try:
        os.rename(tmp, folder)
    except OSError:
        if not (folder / MANIFEST_FILE).is_file():
            raise


def _set_aside(folder: Path, why: Exception) -> None:
    import warnings

    target = folder.with_name(folder.name + ".damaged")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(folder, target)
    warnings.warn(f"cached ONNX graphs in {folder} refused ({why}); kept in {target}", stacklevel=3)


def _tensors(encoder: Encoder) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the encoder's modules, and its own tensor attributes."""
    out: dict[str, torch.Tensor] = {}
    for attr, value in vars(encoder).items():
        if isinstance(value, torch.nn.Module):
            for name, t in value.state_dict(keep_vars=False).items():
                out[f"{attr}.{name}"] = t
        elif isinstance(value, torch.Tensor):
            out[attr] = value
    return out


def _safe(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)[:80]


def _version() -> str:
    try:
        return metadata.version("contrastive")
    except metadata.PackageNotFoundError:
        return "unknown"
