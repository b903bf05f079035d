"""The FAISS side of a collection: int64 labels -> unit vectors, exact or approximate.

Kinds: "flat" (IndexFlatIP: exact), "ivf" (IndexIVFFlat, trained once on the vectors
present when it is built), "hnsw" (IndexHNSWFlat), and two compressed ones: "ivfpq"
(IndexIVFPQ: pq_m bytes per vector) and "hnsw_sq8" (IndexHNSWSQ, 8-bit codes). A kind
that must be trained is built once there are enough vectors to train it (flat before).
Labels are ours, never positions: flat and the HNSWs sit in an IndexIDMap2, the IVFs
store the labels in their lists. HNSW cannot remove vectors: removed labels become
tombstones that searches exclude, and the index is rebuilt once they pass a quarter of it.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from contrastkit.service.index.types import IndexSpec

MIN_TRAIN_PER_LIST = 39  # FAISS warns below 39 training points per IVF list
PQ_MIN_TRAIN = 39 * 256  # the same for the 256 centroids of each PQ sub-quantiser
SQ_MIN_TRAIN = 1_000  # an 8-bit scalar quantiser's per-dimension range needs a sample
GRAPHS = ("hnsw", "hnsw_sq8")  # kinds that cannot remove: tombstones
INVERTED = ("ivf", "ivfpq")  # kinds that keep our labels in their lists
COMPRESSED = ("ivfpq", "hnsw_sq8")  # approximate scores: re-ranked from the stored vectors


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
    if spec.kind == "ivfpq":
        enough = max(MIN_TRAIN_PER_LIST * _nlist(spec, count), PQ_MIN_TRAIN)
        return "ivfpq" if count >= enough else "flat"
    if spec.kind == "hnsw_sq8":
        return "hnsw_sq8" if count >= SQ_MIN_TRAIN else "flat"
    return "hnsw" if count >= spec.auto_threshold else "flat"


def pq_bytes(spec: IndexSpec, dim: int) -> int:
    """Sub-quantisers (bytes per vector) of an ivfpq index: spec.pq_m, or the largest
    divisor of dim up to dim / 8 (384 -> 48, 512 -> 64, 768 -> 96)."""
    if spec.pq_m:
        return spec.pq_m
    return max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)


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
        if vi.kind in ("ivf", "ivfpq", "hnsw_sq8"):
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
        return base if self.kind in INVERTED else faiss.IndexIDMap2(base)

    def _make_base(self, count: int) -> faiss.Index:
        ip, s = faiss.METRIC_INNER_PRODUCT, self.spec
        if self.kind in GRAPHS:
            if self.kind == "hnsw":
                base = faiss.IndexHNSWFlat(self.dim, s.m, ip)
            else:
                base = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_8bit, s.m, ip)
            base.hnsw.efConstruction = s.ef_construction
            base.hnsw.efSearch = s.ef_search
            return base
        if self.kind in INVERTED:
            quantizer = faiss.IndexFlatIP(self.dim)
            nlist = _nlist(s, count)
            if self.kind == "ivf":
                base = faiss.IndexIVFFlat(quantizer, self.dim, nlist, ip)
            else:
                base = faiss.IndexIVFPQ(quantizer, self.dim, nlist, pq_bytes(s, self.dim), 8, ip)
            base.nprobe = s.nprobe
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
        if self.kind in GRAPHS:
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
        if self.kind in GRAPHS:
            # Tombstones take places in the candidate list too: without widening it by the
            # dead share, a search came back with fewer than k of the live vectors.
            ef = max(self.spec.ef_search, k * int(self.index.ntotal) // max(self.live, 1))
            return faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
        if self.kind in INVERTED:
            return faiss.SearchParametersIVF(sel=selector, nprobe=self.spec.nprobe)
        return faiss.SearchParameters(sel=selector)
