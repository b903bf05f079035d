"""Model-based test of the collection store: a plain dict is the truth.

A hypothesis state machine upserts (replacing ids, repeating ids inside a batch), deletes,
searches, snapshots and restarts the store (close, reopen from the folder); after every
step the store must hold exactly what the dict holds. Snapshots are taken every 3 log
records, so most runs cross several snapshot rotations and replay both logs.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from contrastkit.service.index.embedded.collection import Collection
from contrastkit.service.index.embedded.store import CollectionStore
from contrastkit.service.index.types import IndexSpec
from tests.helpers import unit_rows

DIM = 8
SNAPSHOT_EVERY = 3
# ids with characters JSON and file names would mind; 100 of them so IVF (nlist=2 -> needs
# 78 vectors) turns on and off again as the collection grows and shrinks
POOL = [f"id-{i}" for i in range(94)] + ["ü/ß", "a b", '"q"', "\\", "x" * 256, "🙂"]

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.text(max_size=6),
)
metadata = st.dictionaries(
    st.text(max_size=5),
    st.one_of(json_scalar, st.lists(json_scalar, max_size=3)),
    max_size=3,
)
id_lists = st.lists(st.sampled_from(POOL), min_size=1, max_size=30)

SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    database=None,  # no .hypothesis folder in the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class StoreMachine(RuleBasedStateMachine):
    spec = IndexSpec(kind="flat")

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="store-model-"))
        self.store = CollectionStore(self.root, snapshot_every=SNAPSHOT_EVERY)
        self.store.create("c", "test:model", DIM, copy.deepcopy(self.spec))
        self.model: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
        self.made = 0  # vectors drawn so far: each is new, so no two are equal (no ties)

    @property
    def col(self) -> Collection:
        return self.store.get("c")

    def _vector(self) -> np.ndarray:
        self.made += 1
        return unit_rows(1, DIM, self.made)[0]

    # -- rules ---------------------------------------------------------------------
    @rule(ids=id_lists, data=st.data())
    def upsert(self, ids: list[str], data: st.DataObject) -> None:
        metas = [data.draw(metadata) for _ in ids]
        vecs = np.stack([self._vector() for _ in ids])
        n = self.col.upsert(ids, vecs, copy.deepcopy(metas))
        assert n == len(set(ids))
        for i, id_ in enumerate(ids):  # a repeated id: the last occurrence wins
            self.model[id_] = (vecs[i], metas[i])

    @rule(ids=st.lists(st.sampled_from(POOL), min_size=40, max_size=len(POOL), unique=True))
    def fill(self, ids: list[str]) -> None:
        """Many ids at once: crosses the IVF (78) and auto (20) thresholds."""
        vecs = np.stack([self._vector() for _ in ids])
        metas: list[dict[str, Any]] = [{"n": i} for i in range(len(ids))]
        assert self.col.upsert(ids, vecs, copy.deepcopy(metas)) == len(ids)
        for i, id_ in enumerate(ids):
            self.model[id_] = (vecs[i], metas[i])

    @rule(ids=st.lists(st.sampled_from(POOL), max_size=40))
    def delete(self, ids: list[str]) -> None:
        present = {i for i in ids if i in self.model}
        assert self.col.delete(ids) == len(present)
        for i in present:
            del self.model[i]

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), k=st.sampled_from([1, 3, 10, 200]))
    def search(self, data: st.DataObject, k: int) -> None:
        id_ = data.draw(st.sampled_from(sorted(self.model)))
        vec, meta = self.model[id_]
        (hits,) = self.col.search(vec[None, :], k)
        assert hits, f"no hits for {id_!r}"
        assert hits[0].id == id_, f"{id_!r}: top hit {hits[0].id!r} ({self.col.info()})"
        assert abs(hits[0].score - 1.0) < 1e-4
        assert hits[0].metadata == meta
        exact = np.sort(np.stack([v for v, _ in self.model.values()]) @ vec)[::-1][:k]
        if self.col.info().active_index == "hnsw":
            # approximate: with many tombstones a graph search can come back a hit short
            assert len(hits) >= 0.8 * len(exact)
        else:  # flat, and IVF with nprobe >= nlist, are exact: the hits are the top k
            assert len(hits) == len(exact)
            np.testing.assert_allclose([h.score for h in hits], exact, atol=1e-5)
        assert len({h.id for h in hits}) == len(hits), "duplicate hits"
        for h in hits:
            assert h.id in self.model, f"phantom hit {h.id!r}"
            assert h.metadata == self.model[h.id][1]
            assert abs(h.score - float(self.model[h.id][0] @ vec)) < 1e-4
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)

    @rule()
    def snapshot(self) -> None:
        self.col.snapshot()
        assert self.col.info().log_records == 0

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = CollectionStore(self.root, snapshot_every=SNAPSHOT_EVERY)
        assert self.store.problems == {}
        assert self.col.status == "ok"

    # -- invariants --------------------------------------------------------------------
    @invariant()
    def same_as_model(self) -> None:
        col = self.col
        assert col.count == len(self.model)
        assert col.info().count == len(self.model)
        for id_ in POOL:
            got = col.get(id_)
            if id_ not in self.model:
                assert got is None, f"phantom id {id_!r}"
                continue
            assert got is not None, f"lost id {id_!r}"
            vec, meta = self.model[id_]
            np.testing.assert_array_equal(got[0], vec)
            assert got[1] == meta

    @invariant()
    def index_kind_fits(self) -> None:
        info = self.col.info()
        if self.spec.kind in ("flat", "hnsw"):
            assert info.active_index == self.spec.kind

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.root, ignore_errors=True)


class FlatMachine(StoreMachine):
    spec = IndexSpec(kind="flat")


class IvfMachine(StoreMachine):
    # nlist=2 turns IVF on from 78 vectors; nprobe (32) >= nlist makes it exhaustive
    spec = IndexSpec(kind="ivf", nlist=2)


class HnswMachine(StoreMachine):
    spec = IndexSpec(kind="hnsw")


class AutoMachine(StoreMachine):
    # flat below 20 vectors, HNSW from 20: crosses the threshold both ways
    spec = IndexSpec(kind="auto", auto_threshold=20)


TestFlat = FlatMachine.TestCase
TestIvf = IvfMachine.TestCase
TestHnsw = HnswMachine.TestCase
TestAuto = AutoMachine.TestCase
TestFlat.settings = TestIvf.settings = TestHnsw.settings = TestAuto.settings = SETTINGS
