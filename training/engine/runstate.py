"""What a checkpoint holds besides weights: the RNG streams of every rank, and the device.

Exact resume needs every random stream the loop draws from: the global torch generator
(model-side randomness such as MoCo's shuffle), the CUDA generator, and each rank's
augmentation generator. Ranks hold different streams, so rank 0 gathers them all.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from contrastkit.training import dist
from contrastkit.training.encoders.base import resolve_device


def train_device(name: str) -> torch.device:
    """The device this process trains on: under torchrun with CUDA, cuda:LOCAL_RANK."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and dist.is_dist():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _gather_bytes(state: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Each rank's uint8 state [n] -> the list of all ranks' states (CPU), in rank order."""
    if not dist.is_dist():
        return [state.clone()]
    # NCCL moves CUDA tensors only; gloo takes either.
    comm_device = device if device.type == "cuda" else torch.device("cpu")
    gathered = dist.gather_no_grad(state.to(comm_device).unsqueeze(0))
    # clone: unbind() gives views into one buffer, and set_rng_state needs its own storage
    return [g.cpu().clone() for g in gathered.unbind()]


def capture_rng(augment_state: dict[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """Every rank's RNG streams, gathered (call on all ranks; rank 0 saves the result)."""
    out: dict[str, Any] = {
        "torch": _gather_bytes(torch.get_rng_state(), device),
        "augment": {k: _gather_bytes(v, device) for k, v in augment_state.items()},
    }
    if device.type == "cuda":
        out["cuda"] = _gather_bytes(torch.cuda.get_rng_state(device), device)
    return out


def restore_rng(saved: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor] | None:
    """Restore this rank's torch/CUDA streams; returns its augmentation state (or None
    when the checkpoint came from fewer ranks, in which case streams start afresh)."""
    rank = dist.rank()
    if rank >= len(saved.get("torch", [])):
        return None
    torch.set_rng_state(saved["torch"][rank].clone())
    if device.type == "cuda" and "cuda" in saved:
        torch.cuda.set_rng_state(saved["cuda"][rank], device)
    return {k: v[rank] for k, v in saved.get("augment", {}).items()}
