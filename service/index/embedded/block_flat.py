"""Exact search on the CPU over vectors kept in blocks: what a flat collection uses.

FAISS's IndexFlatIP keeps one contiguous copy of every vector. That costs a large
collection twice: on open, the snapshot's rows (already in memory) are copied into it
(2-8 s and 1.5 GB more at 1M x 384), and the first add after the open reallocates and
copies all of it again (0.3-2 s at 300k). Here the rows stay where they are:

- `build` adopts the array it is given as the first block, without a copy (a snapshot's
  read-only rows, usually);
- `add` appends to blocks of BLOCK rows allocated once each, so an add costs what it adds;
- `remove` clears a row's live flag; a block is compacted (its live rows copied) once
  half of it is dead, so a removal costs O(1) amortised and dead rows never dominate.

Labels only grow (a collection assigns them in order), so each block's labels are sorted
and a label is found by two binary searches. Search is exact: per step of STEP rows, one
matrix product and a partial sort, the k best merged across steps. Same interface as
faiss_index.VectorIndex (kind "flat").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contrastkit.service.index.embedded.faiss_index import choose_kind
from contrastkit.service.index.types import IndexSpec

BLOCK = 65_536  # rows per appended block (25 MB at 384 dims; pages are touched as filled)
STEP = 65_536  # rows scored per matrix product: bounds the [q, STEP] score matrix


@dataclass
class _Block:
    rows: np.ndarray  # float32 [capacity, dim]; read-only when adopted from a snapshot
    labels: np.ndarray  # int64 [capacity], ascending over [:fill]
    alive: np.ndarray  # bool [capacity]
    fill: int
    dead: int = 0

    @property
    def first(self) -> int:
        return int(self.labels[0])


class BlockFlatIndex:
    kind = "flat"

    def __init__(self, dim: int, spec: IndexSpec) -> None:
        self.dim, self.spec = dim, spec
        self.tombstones: set[int] = set()  # unused: a removal is exact here
        self._blocks: list[_Block] = []
        self._live = 0

    @classmethod
    def build(
        cls, dim: int, spec: IndexSpec, labels: np.ndarray, vectors: np.ndarray
    ) -> BlockFlatIndex:
        """labels int64 [n], vectors float32 [n, dim]. `vectors` is kept, not copied, when
        its labels are ascending: the caller must not write to it afterwards."""
        idx = cls(dim, spec)
        labels = np.asarray(labels, np.int64)
        if len(labels) > 1 and not bool(np.all(labels[1:] > labels[:-1])):
            order = np.argsort(labels, kind="stable")
            labels, vectors = labels[order], vectors[order]
        if len(labels):
            # adopted as they are when aligned (BLAS needs it; a snapshot's mapped rows
            # are), copied once otherwise
            rows = np.require(vectors, np.float32, ["C", "A"])
            idx._blocks.append(_Block(rows, labels.copy(), np.ones(len(labels), bool), len(labels)))
            idx._live = len(labels)
        return idx

    @property
    def live(self) -> int:
        return self._live

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """labels int64 [m] ascending, each above every label present; vectors [m, dim]."""
        labels = np.asarray(labels, np.int64)
        if not len(labels):
            return
        top = self._top_label()
        if labels[0] <= top or (len(labels) > 1 and not bool(np.all(labels[1:] > labels[:-1]))):
            raise ValueError(f"labels must ascend past {top}, got {labels[:3]}...")
        done = 0
        while done < len(labels):
            block = self._appendable()
            take = min(len(labels) - done, len(block.labels) - block.fill)
            at = block.fill
            block.rows[at : at + take] = vectors[done : done + take]
            block.labels[at : at + take] = labels[done : done + take]
            block.alive[at : at + take] = True
            block.fill += take
            done += take
        self._live += len(labels)

    def _top_label(self) -> int:
        for block in reversed(self._blocks):
            if block.fill:
                return int(block.labels[block.fill - 1])
        return -1

    def _appendable(self) -> _Block:
        last = self._blocks[-1] if self._blocks else None
        if last is not None and last.rows.flags.writeable and last.fill < len(last.labels):
            return last
        block = _Block(
            np.empty((BLOCK, self.dim), np.float32),
            np.empty(BLOCK, np.int64),
            np.zeros(BLOCK, bool),
            0,
        )
        self._blocks.append(block)
        return block

    def remove(self, labels: np.ndarray) -> None:
        """Drop these labels (ones not present are ignored)."""
        labels = np.unique(np.asarray(labels, np.int64))
        if not len(labels) or not self._blocks:
            return
        firsts = np.fromiter((b.first for b in self._blocks), np.int64, len(self._blocks))
        which = np.searchsorted(firsts, labels, side="right") - 1
        for b in np.unique(which[which >= 0]):
            block = self._blocks[int(b)]
            mine = labels[which == b]
            at = np.searchsorted(block.labels[: block.fill], mine)
            ok = at < block.fill
            at, mine = at[ok], mine[ok]
            at = at[(block.labels[at] == mine) & block.alive[at]]
            block.alive[at] = False
            block.dead += len(at)
            self._live -= len(at)
        self._compact()

    def _compact(self) -> None:
        """Copy the live rows of every block that is at least half dead (empty ones go)."""
        kept = []
        for block in self._blocks:
            if block.fill and block.dead * 2 >= block.fill:
                keep = np.flatnonzero(block.alive[: block.fill])
                if not len(keep):
                    continue
                n = len(keep)
                block = _Block(block.rows[keep], block.labels[keep], np.ones(n, bool), n)
            kept.append(block)
        self._blocks = kept

    def needs_rebuild(self, count: int) -> bool:
        return choose_kind(self.spec, count) != self.kind

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries float32 [q, dim] -> (scores [q, k], labels [q, k]; -1 where no hit).

        `allowed` restricts hits to those labels (a metadata filter)."""
        q = np.ascontiguousarray(queries, np.float32)
        k = max(1, k)
        allow = None if allowed is None else np.unique(np.asarray(allowed, np.int64))
        best_s = np.full((len(q), k), -np.inf, np.float32)
        best_l = np.full((len(q), k), -1, np.int64)
        for block in self._blocks:
            for start in range(0, block.fill, STEP):
                stop = min(block.fill, start + STEP)
                ok = block.alive[start:stop]
                labels = block.labels[start:stop]
                if allow is not None:
                    ok = ok & _member(labels, allow)
                if not ok.any():
                    continue
                scores = q @ block.rows[start:stop].T  # [q, rows]
                if not ok.all():
                    scores[:, ~ok] = -np.inf
                best_s, best_l = _merge(best_s, best_l, scores, labels, k)
        order = np.argsort(-best_s, axis=1, kind="stable")
        best_s = np.take_along_axis(best_s, order, 1)
        best_l = np.where(np.isneginf(best_s), -1, np.take_along_axis(best_l, order, 1))
        return best_s, best_l


def _member(labels: np.ndarray, allow: np.ndarray) -> np.ndarray:
    """bool [n]: which of `labels` are in `allow` (sorted, unique)."""
    at = np.minimum(np.searchsorted(allow, labels), len(allow) - 1)
    return allow[at] == labels


def _merge(
    best_s: np.ndarray, best_l: np.ndarray, scores: np.ndarray, labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of (best_s/best_l [q, k]) and (scores [q, m] of labels [m]), unordered."""
    m = scores.shape[1]
    if m > k:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, cand = np.take_along_axis(scores, top, 1), labels[top]
    else:
        cand = np.broadcast_to(labels, scores.shape)
    all_s = np.concatenate([best_s, scores], 1)
    all_l = np.concatenate([best_l, cand], 1)
    top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
    return np.take_along_axis(all_s, top, 1), np.take_along_axis(all_l, top, 1)
