"""Start a run from pretrained backbone weights (`--init-from PATH`), then fine-tune.

PATH is an export directory (its weights.safetensors, checked against encoder.json's
sha256), a `.safetensors` file, or a torch checkpoint (`.pt`, `.pth`, `.bin`; read with
`weights_only=True`, so nothing in it is ever unpickled as code). A checkpoint that nests
its weights under "state_dict" or "model" is unwrapped. Keys are matched to the backbone
after dropping the prefix that fits most of them: "image.backbone." (our exports),
"backbone.", "module." (DDP), "visual." (an open_clip model's image tower) or none.

The load is refused (ValueError) when no tensor fits or a shape differs; keys missing
from the file keep their fresh initialisation and are logged, as are ignored extras.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("contrastive.train")

PREFIXES = ("image.backbone.", "backbone.", "module.", "visual.", "")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of an export directory or a weights file (see the module docstring)."""
    if path.is_dir():
        from contrastkit.training.encoders.exported.format import read_export

        return read_export(path)[1]
    if not path.is_file():
        raise ValueError(f"--init-from {path}: no such file or export directory")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:  # a cut or foreign file: say so, exit 2
            raise ValueError(f"--init-from {path}: not a readable safetensors file ({e})") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, or not a torch file at all
        raise ValueError(f"--init-from {path}: not a readable weights file ({e})") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"--init-from {path}: holds no dictionary of tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_backbone(backbone: nn.Module, path: Path) -> int:
    """Copy the file's tensors into `backbone` -> how many were loaded."""
    own = backbone.state_dict()
    weights = read_weights(path)
    prefix = max(
        PREFIXES, key=lambda p: sum(k.startswith(p) and k.removeprefix(p) in own for k in weights)
    )
    found = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    fits = {k: v for k, v in found.items() if k in own}
    if not fits:
        raise ValueError(
            f"--init-from {path}: none of its {len(weights)} tensors fit this backbone "
            f"(expected keys like {next(iter(own), '?')!r}); is it the same architecture?"
        )
    wrong = [f"{k}: {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in fits.items()
             if v.shape != own[k].shape]  # fmt: skip
    if wrong:
        conv1 = "conv1" in wrong[0]
        hint = " (the CIFAR stem replaces conv1: set cifar_stem false)" if conv1 else ""
        raise ValueError(f"--init-from {path}: shapes differ: {'; '.join(wrong[:5])}{hint}")
    backbone.load_state_dict(fits, strict=False)
    missing = [k for k in own if k not in fits]
    log.info(
        "initialised %d of the backbone's %d tensors from %s (prefix %r)%s%s",
        len(fits),
        len(own),
        path,
        prefix,
        f"; {len(missing)} keep their fresh values, e.g. {missing[0]}" if missing else "",
        f"; {len(found) - len(fits)} of the file's are not the backbone's"
        if len(found) > len(fits)
        else "",
    )
    return len(fits)
