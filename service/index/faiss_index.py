"""The FAISS side of a collection: int64 labels -> unit vectors, exact or approximate.

Kinds: "flat" (IndexFlatIP: exact), "ivf" (IndexIVFFlat, trained once on the vectors
present when it is built), "hnsw" (IndexHNSWFlat). Labels are ours, never positions:
flat and HNSW sit in an IndexIDMap2, IVF stores the labels in its lists. HNSW cannot
remove vectors: removed labels become tombstones that searches exclude, and the index is
rebuilt once they pass a quarter of it.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from service.index.types import IndexSpec

MIN_TRAIN_PER_LIST = 39  # FAISS warns below 39 training points per IVF list


def faiss_gpus() -> int:
    """GPUs FAISS can use: 0 with faiss-cpu."""
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def choose_kind(spec: IndexSpec, count: int) -> str:
    """What to build for `count` vectors: IVF/HNSW only once there are enough to pay off."""
    if spec.kind == "flat":
        return "flat"
    if spec.kind == "hnsw":
        return "hnsw"
    if spec.kind == "ivf":
        return "ivf" if count >= MIN_TRAIN_PER_LIST * _nlist(spec, count) else "flat"
    return "hnsw" if count >= spec.auto_threshold else "flat"


def _nlist(spec: IndexSpec, count: int) -> int:
    return spec.nlist or max(1, int(4 * math.sqrt(max(count, 1))))


class VectorIndex:
    """Search structure over (label, unit vector) pairs; rebuilt from them when needed."""

    def __init__(self, dim: int, spec: IndexSpec, kind: str) -> None:
        self.dim, self.spec, self.kind = dim, spec, kind
        self.tombstones: set[int] = set()
        self.index = self._wrap(self._make_base(0))

    @classmethod
    def build(
        cls, dim: int, spec: IndexSpec, labels: np.ndarray, vectors: np.ndarray, gpu: bool = False
    ) -> VectorIndex:
        """labels int64 [n], vectors float32 [n, dim] -> a filled index of the right kind.

        gpu: put a flat index on every GPU (needs faiss-gpu)."""
        vi = cls.__new__(cls)
        vi.dim, vi.spec, vi.tombstones = dim, spec, set()
        vi.kind = choose_kind(spec, len(labels))
        base = vi._make_base(len(labels))
        if vi.kind == "ivf":
            base.train(vectors)
        if gpu and vi.kind == "flat":
            base = faiss.index_cpu_to_all_gpus(base)
        vi.index = vi._wrap(base)
        if len(labels):
            vi.index.add_with_ids(vectors, labels)
        return vi

    @classmethod
    def wrap(cls, dim: int, spec: IndexSpec, kind: str, index: faiss.Index) -> VectorIndex:
        """A VectorIndex over an index read back from disk (already wrapped and filled)."""
        vi = cls.__new__(cls)
        vi.dim, vi.spec, vi.kind, vi.tombstones, vi.index = dim, spec, kind, set(), index
        return vi

    def _wrap(self, base: faiss.Index) -> faiss.Index:
        # IVF keeps our labels in its inverted lists and removes by them; an ID map over
        # it would go out of step on removal. Flat and HNSW take labels via an ID map.
        return base if self.kind == "ivf" else faiss.IndexIDMap2(base)

    def _make_base(self, count: int) -> faiss.Index:
        if self.kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, self.spec.m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = self.spec.ef_construction
            base.hnsw.efSearch = self.spec.ef_search
            return base
        if self.kind == "ivf":
            quantizer = faiss.IndexFlatIP(self.dim)
            base = faiss.IndexIVFFlat(
                quantizer, self.dim, _nlist(self.spec, count), faiss.METRIC_INNER_PRODUCT
            )
            base.nprobe = self.spec.nprobe
            return base
        return faiss.IndexFlatIP(self.dim)

    @property
    def live(self) -> int:
        return int(self.index.ntotal) - len(self.tombstones)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(vectors, labels)

    def remove(self, labels: np.ndarray) -> None:
        if not len(labels):
            return
        if self.kind == "hnsw":
            self.tombstones.update(int(x) for x in labels)
        else:
            self.index.remove_ids(faiss.IDSelectorBatch(labels))

    def needs_rebuild(self, count: int) -> bool:
        too_dead = len(self.tombstones) > max(1000, self.index.ntotal // 4)
        return too_dead or choose_kind(self.spec, count) != self.kind

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries float32 [q, dim] -> (scores [q, k], labels [q, k]; -1 where no hit).

        `allowed` restricts hits to those labels (a metadata filter)."""
        selector = None
        if allowed is not None:
            if self.tombstones:
                allowed = np.setdiff1d(allowed, np.fromiter(self.tombstones, np.int64))
            selector = faiss.IDSelectorBatch(allowed)
        elif self.tombstones:
            selector = faiss.IDSelectorNot(
                faiss.IDSelectorBatch(np.fromiter(self.tombstones, np.int64))
            )
        k = max(1, min(k, max(self.live, 1)))
        if selector is None:
            return self.index.search(queries, k)
        return self.index.search(queries, k, params=self._params(selector, k))

    def _params(self, selector: faiss.IDSelector, k: int = 1) -> faiss.SearchParameters:
        if self.kind == "hnsw":
            # Tombstones take places in the candidate list too: without widening it by the
            # dead share, a search came back with fewer than k of the live vectors.
            ef = max(self.spec.ef_search, k * int(self.index.ntotal) // max(self.live, 1))
            return faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
        if self.kind == "ivf":
            return faiss.SearchParametersIVF(sel=selector, nprobe=self.spec.nprobe)
        return faiss.SearchParameters(sel=selector)
