"""Exact search with torch on a GPU: the fallback when faiss-gpu is not installed.

PyPI's faiss-gpu is built for CUDA 12 while current torch uses CUDA 13, so on most GPU
machines exact search runs here: an fp16 matrix on the device, one matmul + top-k per
batch of queries. Same interface as faiss_index.VectorIndex (kind "flat"); it runs on
any torch device, which is how the CPU tests check it against FAISS.
"""

from __future__ import annotations

import numpy as np
import torch

from contrastkit.service.index.types import IndexSpec


class TorchFlatIndex:
    kind = "flat"

    def __init__(self, dim: int, spec: IndexSpec, device: torch.device) -> None:
        self.dim, self.spec, self.device = dim, spec, device
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.labels = torch.empty(0, dtype=torch.int64, device=device)
        self.matrix = torch.empty(0, dim, dtype=self.dtype, device=device)
        self.tombstones: set[int] = set()  # unused: removal is exact here

    @classmethod
    def build(
        cls,
        dim: int,
        spec: IndexSpec,
        labels: np.ndarray,
        vectors: np.ndarray,
        device: torch.device,
    ) -> TorchFlatIndex:
        idx = cls(dim, spec, device)
        idx.add(labels, vectors)
        return idx

    @property
    def live(self) -> int:
        return int(self.labels.numel())

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        lab = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        vec = torch.as_tensor(vectors).to(self.device, self.dtype)
        self.labels = torch.cat([self.labels, lab])
        self.matrix = torch.cat([self.matrix, vec])

    def remove(self, labels: np.ndarray) -> None:
        if not len(labels):
            return
        keep = ~torch.isin(self.labels, torch.as_tensor(labels, dtype=torch.int64).to(self.device))
        self.labels, self.matrix = self.labels[keep], self.matrix[keep]

    def needs_rebuild(self, count: int) -> bool:
        return False

    @torch.inference_mode()
    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """float32 [q, dim] -> (scores [q, k], labels [q, k]; -1 where fewer than k)."""
        q = torch.as_tensor(queries).to(self.device, self.dtype)
        matrix, labels = self.matrix, self.labels
        if allowed is not None:
            mask = torch.isin(labels, torch.as_tensor(allowed, dtype=torch.int64).to(self.device))
            matrix, labels = matrix[mask], labels[mask]
        kk = min(k, int(labels.numel()))
        scores = torch.full((len(q), k), -np.inf, dtype=torch.float32)
        out = torch.full((len(q), k), -1, dtype=torch.int64)
        if kk > 0:
            top = (q @ matrix.T).float().topk(kk, dim=1)
            scores[:, :kk] = top.values.cpu()
            out[:, :kk] = labels[top.indices].cpu()
        return scores.numpy(), out.numpy()
