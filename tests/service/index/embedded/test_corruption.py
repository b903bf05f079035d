"""The corruption matrix: damaged files are refused or rebuilt, never silently served short.

Each case damages a collection's files the way bit rot, a stale copy, a truncation or a
full disk would, then checks the expected outcome (refused untouched, rebuilt, or a torn
tail cut and kept aside) and that nothing acknowledged is lost or served wrong. The last
tests run `contrastive index repair` on what was refused.

Layout used throughout: batch "s-" is record 1 and is snapshotted (snapshot.bin at record
1, log.prev.wal = [1]); batches b0-, b1-, ... are records 2, 3, ... in log.wal.
"""

from __future__ import annotations

import errno
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import contrastkit.service.index.embedded.wal as walmod
import contrastkit.service.index.fsutil as fsutil
from contrastkit.service.cli import main
from contrastkit.service.errors import http_status
from contrastkit.service.index.embedded.collection import LOG, PREV_LOG, PREV_SNAP, SNAP
from contrastkit.service.index.embedded.store import CollectionStore
from contrastkit.service.index.embedded.wal import scan_log
from contrastkit.service.index.types import CollectionError
from tests.helpers import unit_rows
from tests.service.index.embedded.test_crash import NAME, Writer

RECORDS = 20  # records in log.wal


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _logged(tmp_path: Path, records: int = RECORDS) -> Writer:
    """A closed store: record 1 in a snapshot, then `records` records (b0-...) in log.wal."""
    w = Writer(tmp_path / "store")
    w.batch("s-")
    w.col.snapshot()
    for i in range(records):
        w.batch(f"b{i}-")
    w.store.close()
    return w


def _forget(w: Writer, prefix: str) -> None:
    """Drop a batch from the truth (a record that is lost), keeping the rest."""
    w.truth = {k: v for k, v in w.truth.items() if not k.startswith(prefix)}


def _assert_refused(w: Writer, *words: str) -> str:
    store = w.reopen()
    assert NAME in store.problems
    with pytest.raises(CollectionError) as e:
        store.get(NAME)
    assert (e.value.code, http_status(e.value.code)) == ("collection_corrupt", 503)
    for word in ("refused", "repair", *words):
        assert word in store.problems[NAME], store.problems[NAME]
    return store.problems[NAME]


# -- the log ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("where", "record"),
    [("payload", 0), ("length", 0), ("payload", RECORDS // 2), ("length", RECORDS // 2)],
    ids=["head-payload", "head-length", "middle-payload", "middle-length"],
)
def test_a_flipped_byte_followed_by_valid_records_is_refused_and_nothing_is_cut(
    tmp_path: Path, where: str, record: int
) -> None:
    w = _logged(tmp_path)
    log = w.folder / LOG
    entry = scan_log(log).entries[record]
    _flip(log, entry.offset + (1 if where == "length" else entry.size // 2))
    before = _files(w.folder)
    why = _assert_refused(w, "valid records follow", f"from record {entry.seq + 1}")
    assert "nothing was cut" in why
    # refused means untouched: no byte cut, no file added (the operator's copy to repair)
    assert _files(w.folder) == before
    w.store.close()


def test_a_flipped_byte_in_the_last_record_is_cut_as_a_torn_tail_and_kept(
    tmp_path: Path,
) -> None:
    """The documented limitation: the last record's damage looks like a torn write."""
    w = _logged(tmp_path)
    log = w.folder / LOG
    last = scan_log(log).entries[-1]
    _flip(log, last.offset + last.size // 2)
    damaged_tail = log.read_bytes()[last.offset :]
    w.reopen()
    assert w.store.problems == {}
    assert w.col.status == "ok"
    _forget(w, f"b{RECORDS - 1}-")
    w.check()  # every earlier record, exactly
    assert log.stat().st_size == last.offset
    (kept,) = w.folder.glob(f"{LOG}.torn-*")
    assert kept.read_bytes() == damaged_tail  # cut, but not destroyed
    w.batch("after-")  # appended right after the good records
    w.reopen()
    assert w.col.status == "ok"
    w.check()


def test_a_truncated_log_serves_exactly_the_prefix_and_keeps_the_cut_bytes(
    tmp_path: Path,
) -> None:
    w = _logged(tmp_path)
    log = w.folder / LOG
    entries = scan_log(log).entries
    cut = entries[5].offset + entries[5].size // 2  # records 0-4 whole, record 5 torn
    full = log.read_bytes()
    log.write_bytes(full[:cut])
    w.reopen()
    assert (w.store.problems, w.col.status) == ({}, "ok")
    for i in range(5, RECORDS):  # gone from the disk: nobody can serve them
        _forget(w, f"b{i}-")
    w.check()  # the prefix, nothing else, nothing wrong
    (kept,) = w.folder.glob(f"{LOG}.torn-*")
    assert kept.read_bytes() == full[entries[5].offset : cut]


def test_log_records_that_skip_a_sequence_number_are_refused(tmp_path: Path) -> None:
    w = _logged(tmp_path)
    log = w.folder / LOG
    data, entries = log.read_bytes(), scan_log(log).entries
    gone = entries[3]  # a whole, valid record cut out of the middle
    log.write_bytes(data[: gone.offset] + data[gone.offset + gone.size :])
    _assert_refused(w, f"record {gone.seq - 1} is followed by record {gone.seq + 1}")
    w.store.close()


# -- snapshots -------------------------------------------------------------------------------
def _rotated(tmp_path: Path) -> tuple[Writer, dict[int, bytes]]:
    """Three snapshots (records 1, 2, 3), then records 4-6 in log.wal -> the writer, and
    each snapshot file's bytes by the record it holds."""
    w = Writer(tmp_path / "store")
    copies = {}
    for s in range(3):
        w.batch(f"s{s}-")
        w.col.snapshot()
        copies[s + 1] = (w.folder / SNAP).read_bytes()
    for i in range(3):
        w.batch(f"t{i}-")
    w.store.close()
    return w, copies


@pytest.mark.parametrize("where", ["head", "middle", "digest"])
def test_a_flipped_byte_in_the_snapshot_is_rebuilt_from_the_previous_one(
    tmp_path: Path, where: str
) -> None:
    w, _ = _rotated(tmp_path)
    snap = w.folder / SNAP
    size = snap.stat().st_size
    _flip(snap, {"head": 2, "middle": size // 2, "digest": size - 1}[where])
    damaged = snap.read_bytes()
    w.reopen()
    assert (w.store.problems, w.col.status) == ({}, "rebuilt_from_log")
    w.check()  # nothing lost
    (aside,) = w.folder.glob("snapshot.damaged-*.bin")
    assert aside.read_bytes() == damaged
    w.reopen()
    assert w.col.status == "ok"
    w.check()


def test_a_truncated_snapshot_is_rebuilt_from_the_previous_one(tmp_path: Path) -> None:
    w, _ = _rotated(tmp_path)
    snap = w.folder / SNAP
    snap.write_bytes(snap.read_bytes()[:-100])
    w.reopen()
    assert (w.store.problems, w.col.status) == ({}, "rebuilt_from_log")
    w.check()


def test_a_stale_snapshot_is_rebuilt_from_the_previous_one(tmp_path: Path) -> None:
    w, copies = _rotated(tmp_path)
    (w.folder / SNAP).write_bytes(copies[1])  # record 1; the logs hold 3 (prev) and 4-6
    w.reopen()
    assert (w.store.problems, w.col.status) == ({}, "rebuilt_from_log")
    w.check()  # not short: every record of the logs and of the previous snapshot
    w.reopen()
    assert w.col.status == "ok"
    w.check()


def test_a_stale_snapshot_is_caught_even_when_log_wal_is_empty(tmp_path: Path) -> None:
    w = Writer(tmp_path / "store")
    old = b""
    for s in range(3):
        w.batch(f"s{s}-")
        w.col.snapshot()
        if s == 1:
            old = (w.folder / SNAP).read_bytes()  # record 2
    w.store.close()
    assert not (w.folder / LOG).exists()  # the last snapshot left no log records
    (w.folder / SNAP).write_bytes(old)  # log.prev.wal holds record 3, newer than it
    w.reopen()
    assert (w.store.problems, w.col.status) == ({}, "rebuilt_from_log")
    w.check()


def test_a_stale_snapshot_without_a_way_back_is_refused(tmp_path: Path) -> None:
    w, copies = _rotated(tmp_path)
    (w.folder / SNAP).write_bytes(copies[1])
    (w.folder / PREV_SNAP).unlink()
    (w.folder / PREV_LOG).unlink()
    before = _files(w.folder)
    _assert_refused(w, "from record 1 to 4: the records between are lost")
    assert _files(w.folder) == before
    w.store.close()


# -- a full disk, then kill -9 -------------------------------------------------------------
class Disk:
    """While `full`: log appends write half their bytes, then fail with ENOSPC, and the
    writer dies at once (kill -9: no rollback); fsutil's files (snapshots, the copy of a
    torn tail) cannot be created at all."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        disk = self
        real_open = open

        class HalfWrites(io.FileIO):
            def write(self, b: Any) -> int:
                if disk.full:
                    super().write(bytes(b)[: len(b) // 2])
                    raise OSError(errno.ENOSPC, "No space left on device")
                return super().write(b)

        def wal_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if mode == "ab":
                return io.BufferedWriter(HalfWrites(path, "ab"))
            return real_open(path, mode, *args, **kwargs)

        def fs_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if disk.full and "w" in mode:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, mode, *args, **kwargs)

        monkeypatch.setattr(walmod, "open", wal_open, raising=False)
        monkeypatch.setattr(fsutil, "open", fs_open, raising=False)
        monkeypatch.setattr(walmod.WriteAheadLog, "_rollback", lambda self: None)


def _crash_image(w: Writer, to: Path) -> Writer:
    """The files as a kill -9 leaves them, opened as a new process would (a copy: the
    dead process's lock and open files stay behind)."""
    shutil.copytree(w.root, to)
    image = Writer.__new__(Writer)
    image.root, image.every, image.truth, image.seed = to, w.every, dict(w.truth), w.seed
    image.store = CollectionStore(to, snapshot_every=w.every)
    return image


def test_disk_full_mid_append_then_kill_9_opens_read_only_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch)
    w = Writer(tmp_path / "store")
    w.batch("a-")
    w.col.snapshot()
    w.batch("b-")
    disk.full = True
    with pytest.raises(CollectionError) as e:
        w.col.upsert(["failed"], unit_rows(1, 8, 777), [{}])
    assert (e.value.code, http_status(e.value.code)) == ("insufficient_storage", 507)
    log = w.folder / LOG
    half = log.read_bytes()
    assert scan_log(log).torn_tail is not None  # half a record, never acknowledged
    torn = half[scan_log(log).valid_end :]
    image = _crash_image(w, tmp_path / "after-kill")  # the disk is still full
    assert image.store.problems == {}  # not collection_corrupt
    assert image.col.status == "disk_full"
    assert image.col.info().status == "disk_full"
    image.check(absent=("failed",))  # every acknowledged write, read-only
    with pytest.raises(CollectionError) as e:
        image.col.upsert(["x"], unit_rows(1, 8, 5), [{}])
    assert (e.value.code, http_status(e.value.code)) == ("insufficient_storage", 507)
    with pytest.raises(CollectionError) as e:
        image.col.delete(["a-0"])
    assert http_status(e.value.code) == 507
    assert (image.folder / LOG).read_bytes() == half  # nothing cut while it cannot be kept
    image.store.close(snapshot=True)  # a shutdown on a full disk: its snapshot fails, logged
    again = _crash_image(image, tmp_path / "after-second-kill")
    assert again.col.status == "disk_full"
    again.check(absent=("failed",))
    disk.full = False  # space freed: the next write cuts the torn tail, then appends
    again.batch("c-")
    assert again.col.status == "ok"
    (kept,) = again.folder.glob(f"{LOG}.torn-*")
    assert kept.read_bytes() == torn  # the half record: cut, but not destroyed
    again.reopen()
    assert (again.store.problems, again.col.status) == ({}, "ok")
    again.check(absent=("failed", "x"))
    again.store.close()
    w.store.close()


def test_disk_full_while_rebuilding_a_snapshot_opens_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w, _ = _rotated(tmp_path)
    _flip(w.folder / SNAP, 100)
    disk = Disk(monkeypatch)
    disk.full = True
    w.reopen()
    assert (w.store.problems, w.col.status) == ({}, "disk_full")
    w.check()  # rebuilt in memory from the previous snapshot and the logs
    with pytest.raises(CollectionError) as e:
        w.col.upsert(["x"], unit_rows(1, 8, 5), [{}])
    assert http_status(e.value.code) == 507
    disk.full = False
    w.batch("after-")  # first the rebuilt snapshot, then the write
    assert w.col.status == "rebuilt_from_log"
    w.reopen()
    assert w.col.status == "ok"
    w.check()


# -- contrastive index repair ------------------------------------------------------------
def _repair(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["index", "repair", NAME, "--dir", str(root)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_repair_salvages_every_readable_record_and_reports_the_lost_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = _logged(tmp_path)
    log = w.folder / LOG
    entries = scan_log(log).entries
    for i in (3, 10, 11):  # records 5, 12 and 13
        _flip(log, entries[i].offset + entries[i].size // 2)
    damaged_log = log.read_bytes()
    _assert_refused(w)
    w.store.close()
    code, out, _ = _repair(w.root, capsys)
    assert code == 0, out
    assert "lost records 5, 12-13" in out
    (moved,) = w.folder.glob("damaged-*")
    assert (moved / LOG).read_bytes() == damaged_log  # kept for the operator
    assert (w.folder / LOG).read_bytes() == b""  # a fresh snapshot and an empty log
    for i in (3, 10, 11):
        _forget(w, f"b{i}-")
    w.reopen()
    assert (w.store.problems, w.col.status) == ({}, "ok")
    w.check()  # everything else, exactly
    w.batch("after-")  # the sequence goes on after the highest record seen
    w.reopen()
    assert w.col.status == "ok"
    w.check()
    w.store.close()
    healthy = _files(w.folder)
    code, out, _ = _repair(w.root, capsys)  # now healthy: nothing to do, nothing touched
    assert (code, "nothing to repair" in out) == (0, True)
    assert _files(w.folder) == healthy


def test_repair_of_a_lost_snapshot_lists_what_only_it_held(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w, _ = _rotated(tmp_path)
    _flip(w.folder / SNAP, 100)
    (w.folder / PREV_SNAP).unlink()  # only the logs are left: records 3-6
    _assert_refused(w)
    w.store.close()
    code, out, _ = _repair(w.root, capsys)
    assert code == 0
    assert "lost records 1-2" in out and "unreadable" in out
    _forget(w, "s0-")
    _forget(w, "s1-")
    w.reopen()
    assert w.col.status == "ok"
    w.check()


def test_repair_of_a_stale_snapshot_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w, copies = _rotated(tmp_path)
    (w.folder / SNAP).write_bytes(copies[1])
    code, out, _ = _repair(w.root, capsys)
    assert code == 0 and "nothing lost" in out
    w.reopen()
    assert w.col.status == "ok"
    w.check()


def test_repair_is_refused_while_the_folder_is_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = _logged(tmp_path, records=3)
    _flip(w.folder / LOG, scan_log(w.folder / LOG).entries[0].offset + 30)
    w.reopen()  # a server holds the folder (its collection refused)
    before = _files(w.folder)
    code, out, err = _repair(w.root, capsys)
    assert code == 2
    assert "open in another process" in err and "stop it" in err
    assert out == ""
    assert _files(w.folder) == before
    w.store.close()


def test_repair_of_an_unknown_collection_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    CollectionStore(tmp_path).close()
    code, _, err = _repair(tmp_path, capsys)
    assert code == 1 and f"no collection named {NAME!r}" in err


def test_scan_finds_each_record_after_damage(tmp_path: Path) -> None:
    """The scanner resyncs on the next record (not a fixed stride) and reports the range."""
    recs = [walmod.Record(walmod.UPSERT, s, [f"i{s}"], [{}], unit_rows(1, 8, s)) for s in (1, 2, 3)]
    blobs = [r.encode() for r in recs]
    path = tmp_path / "x.wal"
    path.write_bytes(blobs[0] + b"\x07" * 37 + blobs[1] + blobs[2])
    scan = scan_log(path)
    assert [e.seq for e in scan.entries] == [1, 2, 3]
    assert [(d.start, d.end) for d in scan.damage] == [(len(blobs[0]), len(blobs[0]) + 37)]
    assert scan.torn_tail is None and scan.corruption() is not None
    got = scan.record(scan.entries[2], 8)
    assert got.ids == ["i3"] and np.array_equal(got.vectors, recs[2].vectors)
