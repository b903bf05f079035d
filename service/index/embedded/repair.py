"""`contrastive index repair NAME`: salvage what a damaged collection's files still hold.

1. Lock the collections folder, as a server does: refused (exit 2) while one runs.
2. Read every readable piece: snapshot.bin and snapshot.prev.bin (each if its checksum
   holds) and every valid record of log.prev.wal and log.wal, damaged ranges skipped.
3. Start from the snapshot (or an empty start) that loses the fewest records and apply
   every readable record after it, in sequence order; the sequence numbers with no
   readable record are reported as lost (or "nothing lost").
4. Write the result as a fresh snapshot and an empty log, move the old files into
   `damaged-<utc>/` inside the collection's folder, and check that it now opens "ok".

The order of step 4 is crash-safe: the new snapshot is fsynced before anything moves, and
it holds every readable record, so a crash part-way leaves files that open to the repaired
state or are refused again (run the repair again); never a collection served short.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.index.embedded.recovery import (
    LOG,
    META,
    PREV_LOG,
    PREV_SNAP,
    SNAP,
    SNAP_TMP,
    RecoveryRefusedError,
    plan,
)
from service.index.embedded.snapshot import (
    CorruptSnapshotError,
    Snapshot,
    encode_snapshot,
    read_snapshot,
)
from service.index.embedded.wal import UPSERT, Entry, LogScan, scan_log
from service.index.fsutil import fsync_dir, unused_path, write_file
from service.index.types import CollectionError, check_name

Say = Callable[[str], None]
EXIT_OK, EXIT_ERROR, EXIT_LOCKED = 0, 1, 2


@dataclass
class Salvage:
    """What the files hold: the best start, the readable records after it, what is lost."""

    base_name: str  # SNAP, PREV_SNAP or "an empty start"
    base: Snapshot | None
    records: list[tuple[LogScan, Entry]]  # every readable record after the base, in seq order
    lost: list[int]  # sequence numbers after the base with no readable record
    last: int  # the highest sequence number seen anywhere
    findings: list[str] = field(default_factory=list)  # one line per file, for people
    damaged: bool = False  # anything unreadable at all

    @property
    def base_seq(self) -> int:
        return self.base.seq if self.base is not None else 0


def survey(folder: Path, dim: int) -> Salvage:
    """Read everything readable in `folder` (changes nothing) -> the Salvage that loses least."""
    findings: list[str] = []
    damaged = False
    snaps: dict[str, Snapshot] = {}
    for name in (SNAP, PREV_SNAP):
        if (folder / name).exists():
            try:
                snap = snaps[name] = read_snapshot(folder / name, dim)
                findings.append(f"{name}: up to record {snap.seq}, {len(snap.ids)} items")
            except CorruptSnapshotError as e:
                findings.append(f"{name}: unreadable ({e})")
                damaged = True
    by_seq: dict[int, tuple[LogScan, Entry]] = {}
    for name in (PREV_LOG, LOG):
        scan = scan_log(folder / name)
        if scan.exists:
            findings.append(_describe_log(scan))
            damaged = damaged or bool(scan.damage) or scan.corruption() is not None
        for entry in scan.entries:
            by_seq.setdefault(entry.seq, (scan, entry))
    last = max([0, *by_seq, *(s.seq for s in snaps.values())])
    starts: list[tuple[str, Snapshot | None]] = [*snaps.items(), ("an empty start", None)]

    def lost_after(start: Snapshot | None) -> list[int]:
        seq = start.seq if start is not None else 0
        return [s for s in range(seq + 1, last + 1) if s not in by_seq]

    # the fewest records lost; on a tie the newest snapshot (the fewest records to apply)
    name, base = min(starts, key=lambda s: (len(lost_after(s[1])), -(s[1].seq if s[1] else 0)))
    seq = base.seq if base is not None else 0
    records = [by_seq[s] for s in sorted(by_seq) if s > seq]
    return Salvage(name, base, records, lost_after(base), last, findings, damaged)


def _describe_log(scan: LogScan) -> str:
    seqs = [e.seq for e in scan.entries]
    line = f"{scan.path.name}: {len(seqs)} valid records"
    if seqs:
        line += f" ({_ranges(sorted(set(seqs)))})"
    if scan.damage:
        line += f"; damaged: {scan.describe_damage()}"
        tail = scan.torn_tail
        if tail is not None and scan.path.name == LOG:
            line += " (the last range: a write torn by a crash, or a damaged last record)"
    return line


def _ranges(seqs: list[int]) -> str:
    """Sorted ints -> "records 3, 5-9"."""
    parts: list[str] = []
    start = prev = seqs[0]
    for s in [*seqs[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ("record " if len(seqs) == 1 else "records ") + ", ".join(parts)


def needs_repair(folder: Path, dim: int, salvage: Salvage) -> bool:
    """True unless every file is intact and the collection opens as it is."""
    try:
        found = plan(folder, dim)
    except RecoveryRefusedError:
        return True
    return salvage.damaged or found.rebuilt


def rebuild(salvage: Salvage, dim: int) -> Snapshot:
    """The base snapshot with every salvaged record applied -> the state at salvage.last."""
    vec: dict[str, np.ndarray] = {}
    meta: dict[str, dict[str, Any]] = {}
    if salvage.base is not None:
        for i, id_ in enumerate(salvage.base.ids):
            vec[id_], meta[id_] = salvage.base.vectors[i], salvage.base.metadata[i]
    for scan, entry in salvage.records:
        rec = scan.record(entry, dim)
        for i, id_ in enumerate(rec.ids):
            if rec.op == UPSERT:
                assert rec.vectors is not None
                vec[id_], meta[id_] = rec.vectors[i], rec.metadata[i]
            else:
                vec.pop(id_, None)
                meta.pop(id_, None)
    ids = list(vec)
    vectors = np.stack([vec[i] for i in ids]) if ids else np.zeros((0, dim), np.float32)
    return Snapshot(max(salvage.last, salvage.base_seq), ids, [meta[i] for i in ids], vectors)


def replace_files(folder: Path, snap: Snapshot) -> Path:
    """Write `snap` as snapshot.bin with an empty log.wal; move the old files into a new
    `damaged-<utc>/` folder -> that folder. Crash-safe order (see the module docstring)."""
    tmp = folder / SNAP_TMP
    write_file(tmp, encode_snapshot(snap))
    damaged = unused_path(folder, "damaged")
    damaged.mkdir()
    if (folder / SNAP).exists():
        os.replace(folder / SNAP, damaged / SNAP)
    os.replace(tmp, folder / SNAP)
    fsync_dir(folder)
    # the new snapshot already holds every record they have: from here on they only wait
    olds = [folder / LOG, folder / PREV_LOG, folder / PREV_SNAP]
    olds += sorted(folder.glob("snapshot.damaged-*")) + sorted(folder.glob(f"{LOG}.torn-*"))
    for old in olds:
        if old.exists():
            os.replace(old, damaged / old.name)
    write_file(folder / LOG, b"")
    fsync_dir(damaged)
    fsync_dir(folder)
    return damaged


def repair_collection(folder: Path, say: Say) -> bool:
    """Repair the collection in `folder` (its store's lock held), telling `say` what it
    finds and does -> whether anything was changed."""
    dim = int(json.loads((folder / META).read_text())["dim"])
    say(f"checking {folder}")
    salvage = survey(folder, dim)
    for line in salvage.findings:
        say(f"  {line}")
    if not needs_repair(folder, dim, salvage):
        say("nothing to repair: every file is intact and the collection opens as it is")
        return False
    say(
        f"salvaging: {salvage.base_name}"
        + (f" (up to record {salvage.base_seq})" if salvage.base is not None else "")
        + f", then {len(salvage.records)} log records"
    )
    snap = rebuild(salvage, dim)
    damaged = replace_files(folder, snap)
    _verify(folder, len(snap.ids))
    lost = f"lost {_ranges(salvage.lost)}" if salvage.lost else "nothing lost"
    say(f"repaired: {len(snap.ids)} items up to record {snap.seq}; {lost}")
    if any("unreadable" in line for line in salvage.findings):
        say("  (an unreadable snapshot may also have held records newer than any log shows)")
    say(f"the old files are in {damaged}")
    return True


def _verify(folder: Path, count: int) -> None:
    from service.index.embedded.collection import Collection  # faiss and torch: only once needed

    col = Collection(folder)
    try:
        if col.status != "ok" or col.count != count:
            raise CollectionError(
                "storage_error",
                f"the repaired collection opens with status {col.status!r} and "
                f"{col.count} items, not 'ok' and {count}",
            )
    finally:
        col.close()


def run_repair(name: str, collections_dir: str) -> int:
    """`contrastive index repair NAME [--dir DIR]` -> exit status (2: a server holds it)."""
    from service.index.embedded.store import StoreLockedError, lock_folder

    root = Path(collections_dir)
    prefix = "contrastive index repair"
    try:
        folder = root / check_name(name)
    except CollectionError as e:
        print(f"{prefix}: {e}", file=sys.stderr)
        return EXIT_ERROR
    if not (folder / META).is_file():
        print(f"{prefix}: no collection named {name!r} in {root}", file=sys.stderr)
        return EXIT_ERROR
    try:
        lock = lock_folder(root)
    except StoreLockedError:
        print(
            f"{prefix}: the collections folder {root} is open in another process (a running "
            "server?): stop it, then run the repair again. Nothing was changed.",
            file=sys.stderr,
        )
        return EXIT_LOCKED
    try:
        repair_collection(folder, print)
    except (CollectionError, OSError, ValueError, KeyError) as e:
        print(f"{prefix}: {e}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        lock.close()
    return EXIT_OK
