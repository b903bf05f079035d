"""Crash safety of the collection store.

The main test kills a writing process with SIGKILL at random moments, again and again in
the same folder, and checks after each restart that every acknowledged write is there and
nothing else is. The child says when it is writing (its first acknowledgement); the kill
comes a random time after that, so a busy machine changes where kills land, never whether
the test passes. The unit tests damage the files the way crashes, bit rot and full disks
do, and check what the store makes of them.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import contrastkit.service.index.embedded.wal as walmod
import contrastkit.service.index.fsutil as fsutil
from contrastkit.service.errors import http_status
from contrastkit.service.index.embedded.collection import LOG, PREV_SNAP, SNAP, Collection
from contrastkit.service.index.embedded.store import CollectionStore
from contrastkit.service.index.types import CollectionError, IndexSpec
from tests.helpers import unit_rows
from tests.service.index.embedded.crash_child import (
    DIM,
    NAME,
    SNAPSHOT_EVERY,
    batch_ids,
    metadata_of,
    vector,
)

CHILD = Path(__file__).with_name("crash_child.py")
ROUNDS = 12
START_S = 180  # generous: the child imports the service and reopens a growing store
BATCHES_PER_ROUND = 100_000  # batch numbers of round r start at r * this


# -- the kill loop ----------------------------------------------------------------------
class Child:
    """crash_child.py writing into `root`; its stdout lines are collected by a thread."""

    def __init__(self, root: Path, first: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(root), str(first)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()  # the store is open
        self.writing = threading.Event()  # the first batch of this run is acknowledged
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.startswith("READY"):
                self.ready.set()
            elif line.startswith("ACK "):
                self.writing.set()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(30)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-2000:]

    def batches(self, word: str) -> set[int]:
        return {int(x.split()[1]) for x in self.lines if x.startswith(word + " ")}


def _check_store(root: Path, acked: set[int], sent: set[int]) -> int:
    """Reopen the store in-process and check it against what the children said."""
    store = CollectionStore(root, snapshot_every=SNAPSHOT_EVERY)
    try:
        assert store.problems == {}
        col = store.get(NAME)
        assert col.status in ("ok", "rebuilt_from_log")
        sent_ids = {i for b in sent for i in batch_ids(b)}
        stored = {i for i in sent_ids if col.get(i) is not None}
        # no id that was never sent, and each id once: the count is exactly the sent ones
        assert col.count == len(stored), f"{col.count - len(stored)} ids never sent"
        for b in sent:  # one upsert is one log record: all of a batch or none of it
            present = [i in stored for i in batch_ids(b)]
            assert all(present) or not any(present), f"batch {b} is partly there"
            if b in acked:
                assert all(present), f"acknowledged batch {b} is missing"
        for id_ in stored:
            got = col.get(id_)
            assert got is not None
            np.testing.assert_array_equal(got[0], vector(id_))
            assert got[1] == metadata_of(id_)
        ids = sorted(stored)
        queries = np.stack([vector(i) for i in ids])
        for start in range(0, len(ids), 4096):
            hits = col.search(queries[start : start + 4096], 3)
            for id_, row in zip(ids[start : start + 4096], hits, strict=True):
                assert row[0].id == id_
                assert len({h.id for h in row}) == len(row), f"duplicate hits for {id_}"
        return len(stored)
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["flat", "hnsw"])  # hnsw: its index saved with snapshots
def test_sigkill_at_random_moments_loses_no_acknowledged_write(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(1234)
    root = tmp_path / "store"
    store = CollectionStore(root, snapshot_every=SNAPSHOT_EVERY)
    store.create(NAME, "test:model", DIM, IndexSpec(kind=kind))  # type: ignore[arg-type]
    store.close()
    acked: set[int] = set()
    sent: set[int] = set()
    counts = []
    caplog.set_level(logging.WARNING, "contrastive.index")
    for r in range(ROUNDS):
        child = Child(root, r * BATCHES_PER_ROUND)
        if not (child.ready.wait(START_S) and child.writing.wait(START_S)):
            child.kill()
            pytest.fail(f"the child did not start writing in {START_S} s: {child.stderr()}")
        time.sleep(rng.uniform(0.0, 0.8))  # a random moment of its writing
        child.kill()
        assert child.proc.returncode == -signal.SIGKILL, child.stderr()
        acked |= child.batches("ACK")
        sent |= child.batches("SEND")
        counts.append(_check_store(root, acked, sent))
    # how the kills landed (random; for the record): mid-append, mid-snapshot
    torn = sum("torn" in m for m in caplog.messages)
    rebuilt = sum("rebuilding from the log" in m for m in caplog.messages)
    print(
        f"\n{ROUNDS} kills: {len(acked)} batches acknowledged; reopened after a torn log tail "
        f"{torn}x, after a missing/partial snapshot {rebuilt}x; vectors after each: {counts}"
    )
    assert len(acked) >= ROUNDS  # each round waited for one acknowledgement at least
    assert counts == sorted(counts)  # nothing durable ever went away again


# -- helpers for the unit tests ------------------------------------------------------


class Writer:
    """A store in tmp with one collection, and the truth about what was acknowledged."""

    def __init__(self, root: Path, every: int = 1000, spec: IndexSpec | None = None) -> None:
        self.root, self.every = root, every
        self.store = CollectionStore(root, snapshot_every=every)
        self.store.create(NAME, "test:model", 8, spec or IndexSpec(kind="flat"))
        self.truth: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
        self.seed = 0

    @property
    def col(self) -> Collection:
        return self.store.get(NAME)

    @property
    def folder(self) -> Path:
        return self.root / NAME

    def batch(self, prefix: str, n: int = 5) -> list[str]:
        self.seed += 1
        ids = [f"{prefix}{i}" for i in range(n)]
        vecs = unit_rows(n, 8, self.seed)
        metas = [{"p": prefix, "i": i} for i in range(n)]
        self.col.upsert(ids, vecs, metas)
        self.truth.update({id_: (vecs[i], metas[i]) for i, id_ in enumerate(ids)})
        return ids

    def reopen(self) -> CollectionStore:
        self.store.close()
        self.store = CollectionStore(self.root, snapshot_every=self.every)
        return self.store

    def check(self, absent: tuple[str, ...] = ()) -> None:
        col = self.col
        assert col.count == len(self.truth)
        for id_, (vec, meta) in self.truth.items():
            got = col.get(id_)
            assert got is not None, f"lost {id_}"
            np.testing.assert_array_equal(got[0], vec)
            assert got[1] == meta
            assert col.search(vec[None], 1)[0][0].id == id_
        for id_ in absent:
            assert col.get(id_) is None, f"{id_} should not be there"


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bitflip":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "missing":
        path.unlink()
    else:
        raise ValueError(how)


# -- snapshots --------------------------------------------------------------------
@pytest.mark.parametrize("how", ["truncate", "bitflip", "empty", "missing"])
@pytest.mark.parametrize("snapshots", [1, 3])
def test_corrupt_snapshot_is_rebuilt_from_the_log(tmp_path: Path, how: str, snapshots: int) -> None:
    w = Writer(tmp_path)
    for s in range(snapshots):
        w.batch(f"s{s}-")
        w.col.snapshot()
    w.batch("tail-")
    w.store.close()
    _damage(w.folder / SNAP, how)
    w.reopen()
    assert w.store.problems == {}
    assert w.col.status == "rebuilt_from_log"
    assert w.col.info().status == "rebuilt_from_log"
    w.check()
    # the recovered state was written as a new snapshot: it reopens cleanly, and goes on
    w.batch("after-")
    w.reopen()
    assert w.col.status == "ok"
    w.check()


def test_corrupt_snapshot_and_corrupt_previous_snapshot_is_refused(tmp_path: Path) -> None:
    w = Writer(tmp_path)
    for s in range(3):  # three rotations: the log from before the snapshots is cut
        w.batch(f"s{s}-")
        w.col.snapshot()
    w.batch("tail-")
    w.store.close()
    _damage(w.folder / SNAP, "bitflip")
    _damage(w.folder / PREV_SNAP, "truncate")
    before = {p.name: p.read_bytes() for p in w.folder.iterdir()}
    store = w.reopen()
    assert NAME in store.problems
    assert "refused" in store.problems[NAME]
    assert "previous snapshot" in store.problems[NAME]
    with pytest.raises(CollectionError) as e:
        store.get(NAME)
    assert http_status(e.value.code) == 503
    assert e.value.code == "collection_corrupt"
    assert [c.name for c in store.list()] == []
    with pytest.raises(CollectionError) as e:
        store.create(NAME, "test:model", 8)
    assert http_status(e.value.code) == 409
    # refused means untouched: an operator can still try to recover the files
    assert {p.name: p.read_bytes() for p in w.folder.iterdir()} == before


def test_corrupt_snapshot_with_a_gap_in_the_logs_is_refused(tmp_path: Path) -> None:
    w = Writer(tmp_path)
    for s in range(3):
        w.batch(f"s{s}-")
        w.col.snapshot()
    w.batch("tail-")
    w.store.close()
    _damage(w.folder / SNAP, "truncate")
    (w.folder / PREV_SNAP).unlink()  # only the logs are left, and they start late
    store = w.reopen()
    assert "records between are lost" in store.problems[NAME]
    with pytest.raises(CollectionError) as e:
        store.get(NAME)
    assert http_status(e.value.code) == 503


# -- the log -------------------------------------------------------------------------
TAILS = {
    "half_record": lambda rec: rec[: len(rec) // 2],
    "header_only": lambda rec: rec[:5],
    "zeros": lambda rec: b"\0" * 4096,  # a crash can leave the file longer, zero-filled
    "bad_crc": lambda rec: rec[:-1] + bytes([rec[-1] ^ 1]),
    "huge_length": lambda rec: b"\xff\xff\xff\xff" + rec[4:],
}


@pytest.mark.parametrize("tail", sorted(TAILS))
def test_torn_log_tail_is_cut_and_earlier_records_survive(tmp_path: Path, tail: str) -> None:
    w = Writer(tmp_path)
    w.batch("a-")
    w.col.snapshot()
    w.batch("b-")
    w.batch("c-")
    w.store.close()
    log = w.folder / LOG
    good = log.stat().st_size
    rec = walmod.Record(walmod.UPSERT, 99, ["torn"], [{}], unit_rows(1, 8, 99)).encode()
    with open(log, "ab") as f:
        f.write(TAILS[tail](rec))
    w.reopen()
    assert w.store.problems == {}
    assert w.col.status == "ok"
    w.check(absent=("torn",))
    assert log.stat().st_size == good  # cut back to the last whole record
    w.batch("d-")  # appended right after the good records, not after the garbage
    w.reopen()
    w.check(absent=("torn",))


# -- a full disk ------------------------------------------------------------------------
class FullDisk:
    """Makes the log's writes (or fsyncs) fail with ENOSPC while `full` is set.

    "write": the log file's raw writes fail, as on a real full disk (the buffered writer
    keeps the bytes it could not write). "fsync": the bytes reach the page cache but the
    fsync fails (ENOSPC on delayed allocation)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
        self.full = False
        disk = self
        real_open, real_fsync = open, os.fsync

        class Raw(io.FileIO):
            def write(self, b: Any) -> int:
                if disk.full:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return super().write(b)

        def wal_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if mode == "ab":
                return io.BufferedWriter(Raw(path, "ab"))
            return real_open(path, mode, *args, **kwargs)

        def fsync(fd: int) -> None:
            if disk.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        if where == "write":
            monkeypatch.setattr(walmod, "open", wal_open, raising=False)
        else:
            monkeypatch.setattr(walmod.os, "fsync", fsync)


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_on_the_log_is_507_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    disk = FullDisk(monkeypatch, where)
    w = Writer(tmp_path)
    w.batch("a-")
    w.col.snapshot()
    w.batch("b-")
    disk.full = True
    with pytest.raises(CollectionError) as e:
        w.col.upsert(["failed"], unit_rows(1, 8, 1234), [{"x": 1}])
    assert (http_status(e.value.code), e.value.code) == (507, "insufficient_storage")
    with pytest.raises(CollectionError) as e:
        w.col.delete(["a-0"])
    assert http_status(e.value.code) == 507
    w.check(absent=("failed",))  # a failed write changed nothing in memory
    disk.full = False  # space is freed: writing goes on
    w.batch("c-")
    w.check(absent=("failed",))
    disk.full = True
    with pytest.raises(CollectionError):
        w.col.upsert(["failed2"], unit_rows(1, 8, 4321), [{}])
    disk.full = False
    w.reopen()
    assert w.store.problems == {}
    w.check(absent=("failed", "failed2"))


def test_disk_full_on_a_snapshot_is_507_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = Writer(tmp_path, every=2)
    w.batch("a-")
    w.batch("b-")  # the 2nd record: an automatic snapshot
    assert (w.folder / SNAP).exists()
    w.batch("c-")
    real_open = open

    def full_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:  # the snapshot's temp file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(fsutil, "open", full_open, raising=False)
    with pytest.raises(CollectionError) as e:
        w.col.snapshot()
    assert http_status(e.value.code) == 507
    # the new snapshot is written in full before the old one moves: the old one stays
    assert (w.folder / SNAP).exists()
    assert not list(w.folder.glob(".*.tmp"))
    w.batch("d-")
    w.batch("e-")  # the automatic snapshot fails too, but the writes succeeded
    w.check()
    monkeypatch.undo()
    w.reopen()
    assert w.store.problems == {}
    assert w.col.status == "ok"  # the old snapshot and the whole log: nothing to rebuild
    w.check()


# -- names ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["../x", "..", "a/b", "", ".hidden", "-x", "x..y", "a" * 65, "a b", "é"]
)
def test_invalid_names_are_422(tmp_path: Path, name: str) -> None:
    store = CollectionStore(tmp_path / "store")
    for call in (
        lambda: store.create(name, "test:model", 8),
        lambda: store.get(name),
        lambda: store.delete(name),
    ):
        with pytest.raises(CollectionError) as e:
            call()
        assert (http_status(e.value.code), e.value.code) == (422, "invalid_name")
    assert not (tmp_path / "x").exists()
    assert [p.name for p in (tmp_path / "store").iterdir()] == [".lock"]  # nothing else
