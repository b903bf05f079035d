"""Near-duplicate groups of a collection: the connected components of "cosine >= threshold".

Written once, on the backend interface (contrastkit.service.index.backend): the items are scrolled
with their vectors, then the similar pairs are found in one of two ways.

- exact, when a flat index serves the collection: every pair, scored in blocks of rows
  ([block, n] matrices of at most BLOCK_BYTES), so memory stays bounded beside the
  vectors themselves ([n, dim] float32);
- approximate otherwise (IVF, HNSW, Qdrant): each item's NEIGHBOURS nearest, through the
  collection's own search, keeping those at or above the threshold. A group larger than
  NEIGHBOURS is still found whole when its members chain together, as near copies do.

Pairs join their items in a union-find; a group is a component of at least two items.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from contrastkit.service.index.backend import CollectionHandle, iter_items
from contrastkit.service.index.filters import Filter
from contrastkit.service.index.types import CollectionError

BLOCK_BYTES = 64 << 20  # one [block, n] float32 similarity matrix at most
NEIGHBOURS = 32  # approximate path: neighbours asked for per item
QUERY_BATCH = 256  # approximate path: items searched per call into the backend
PAGE = 1000  # items per scroll page
# float32 rounding: a unit vector's product with itself can come out at 0.99999994, and
# threshold 1.0 must still group identical vectors
EPS = 1e-6


@dataclass(frozen=True)
class DuplicateQuery:
    """What to look for: `threshold` in (0, 1]; `where` restricts the scan; at most `limit`
    groups come back; `max_items` scans only that many (None: all, up to `max_scan`)."""

    threshold: float
    where: Filter
    limit: int
    max_items: int | None
    max_scan: int


@dataclass
class Group:
    """One group: its ids sorted; the highest and lowest similarity of the pairs that
    joined it (every such pair is >= threshold; two members may be less similar when a
    third links them)."""

    ids: list[str]
    max_similarity: float
    min_similarity: float


@dataclass
class Duplicates:
    groups: list[Group]  # largest first, then by first id; at most `limit`
    n_groups: int  # all groups found, before `limit`
    n_items_scanned: int
    exact: bool  # every pair compared (flat index), or nearest neighbours only
    truncated: bool  # groups left out past `limit`, or items past `max_items` not scanned

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def find_duplicates(handle: CollectionHandle, q: DuplicateQuery) -> Duplicates:
    """The near-duplicate groups of `handle`'s items that `q.where` matches.

    Refuses ("scan_too_large") a scan of more than `q.max_scan` items unless `q.max_items`
    bounds it. Blocks on the backend and on the CPU: call it off the event loop."""
    ids, vectors, cut = _scan(handle, q)
    exact = handle.info().active_index == "flat"
    comps = _Components(len(ids))
    if exact:
        _join_all_pairs(comps, vectors, q.threshold)
    else:
        _join_neighbours(comps, handle, ids, vectors, q)
    groups = comps.groups(ids)
    return Duplicates(groups[: q.limit], len(groups), len(ids), exact, cut or len(groups) > q.limit)


# -- the items -------------------------------------------------------------------------------
def _scan(handle: CollectionHandle, q: DuplicateQuery) -> tuple[list[str], np.ndarray, bool]:
    """The matching items -> (ids [n], unit vectors float32 [n, dim], whether items were
    left unscanned by `max_items`)."""
    cap = q.max_items if q.max_items is not None else q.max_scan
    if q.max_items is None and not q.where and handle.count() > cap:
        raise _too_large(handle.name, cap)  # known before a single page is read
    ids: list[str] = []
    rows: list[np.ndarray] = []
    for item in _matching(handle, q.where):
        if len(ids) == cap:  # one more than may be scanned
            if q.max_items is None:
                raise _too_large(handle.name, cap)
            return ids, _stack(rows, handle.dim), True
        ids.append(item[0])
        rows.append(item[1])
    return ids, _stack(rows, handle.dim), False


def _matching(handle: CollectionHandle, where: Filter) -> Iterator[tuple[str, np.ndarray]]:
    for it in iter_items(handle, PAGE, vectors=True):
        if it.vector is not None and where.matches(it.metadata):
            yield it.id, it.vector


def _stack(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)


def _too_large(name: str, cap: int) -> CollectionError:
    return CollectionError(
        "scan_too_large",
        f"collection {name!r} holds more than {cap} items to compare (max_duplicate_scan): "
        "narrow the scan with a 'filter', or give 'max_items' to scan only the first ones",
    )


# -- similar pairs -------------------------------------------------------------------------
def _join_all_pairs(comps: _Components, x: np.ndarray, threshold: float) -> None:
    """Every pair i < j of x [n, dim] with x_i . x_j >= threshold, a block of rows at a
    time: rows [s, e) against columns [s, n), the upper triangle only."""
    n = len(x)
    rows = max(1, BLOCK_BYTES // (4 * max(n, 1)))
    for s in range(0, n, rows):
        e = min(n, s + rows)
        sims = x[s:e] @ x[s:].T  # [e - s, n - s]
        close = sims >= threshold - EPS
        close[np.tril_indices(e - s, m=n - s)] = False  # i >= j: each pair once, no self
        r, c = np.nonzero(close)
        if len(r):
            comps.join(s + r, s + c, sims[r, c])


def _join_neighbours(
    comps: _Components, handle: CollectionHandle, ids: list[str], x: np.ndarray, q: DuplicateQuery
) -> None:
    """Each item's nearest neighbours among the scanned ones, by the backend's search."""
    at = {id_: i for i, id_ in enumerate(ids)}
    k = min(NEIGHBOURS + 1, len(ids))  # + 1: an item usually finds itself first
    for s in range(0, len(ids), QUERY_BATCH):
        hits = handle.search(x[s : s + QUERY_BATCH], k, q.where if q.where else None)
        a, b, w = [], [], []
        for i, row in enumerate(hits, start=s):
            for h in row:
                j = at.get(h.id)  # None: not scanned (past max_items)
                if j is not None and j != i and h.score >= q.threshold - EPS:
                    a.append(i)
                    b.append(j)
                    w.append(h.score)
        if a:
            comps.join(np.asarray(a), np.asarray(b), np.asarray(w, np.float32))


# -- union-find ------------------------------------------------------------------------------
class _Components:
    """Union-find over n items on arrays, so that a block of pairs is joined at once; with
    each item's highest and lowest pair similarity."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)  # parent[x] <= x always: a root is its component's least
        self.best = np.full(n, -np.inf, np.float32)
        self.worst = np.full(n, np.inf, np.float32)

    def join(self, a: np.ndarray, b: np.ndarray, sims: np.ndarray) -> None:
        """Pairs a [m], b [m] of item positions, similarities sims [m]."""
        for end in (a, b):
            np.maximum.at(self.best, end, sims)
            np.minimum.at(self.worst, end, sims)
        while True:  # hook roots onto smaller roots until every pair shares one
            roots = self._roots()
            ra, rb = roots[a], roots[b]
            apart = ra != rb
            if not apart.any():
                return
            lo, hi = np.minimum(ra[apart], rb[apart]), np.maximum(ra[apart], rb[apart])
            np.minimum.at(self.parent, hi, lo)

    def _roots(self) -> np.ndarray:
        """Point every item at its root (pointer jumping) -> parent [n]."""
        p = self.parent
        while True:
            up = p[p]
            if np.array_equal(up, p):
                self.parent = p
                return p
            p = up

    def groups(self, ids: list[str]) -> list[Group]:
        """Components of 2+ items, largest first, then by first id."""
        roots = self._roots()
        _, inverse, counts = np.unique(roots, return_inverse=True, return_counts=True)
        members: dict[int, list[int]] = {}
        for i in np.flatnonzero(counts[inverse] >= 2):
            members.setdefault(int(inverse[i]), []).append(int(i))
        out = [
            Group(
                sorted(ids[i] for i in m),
                min(1.0, float(self.best[m].max())),
                min(1.0, float(self.worst[m].min())),
            )
            for m in members.values()
        ]
        out.sort(key=lambda g: (-len(g.ids), g.ids[0]))
        return out
