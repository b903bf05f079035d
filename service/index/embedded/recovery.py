"""How a collection's files are read back: which snapshot, which log records; or a refusal.

Files in a collection's folder:

    collection.json        name, model_id, dim, index spec, created_at; sealed by a
                           checksum of its own (contrastkit.service.index.embedded.meta)
    snapshot.bin           state up to log sequence S (checksummed, atomic)
    snapshot.prev.bin      the snapshot before it, kept for recovery
    log.prev.wal           records between the two snapshots
    log.wal                records after S

`plan` only reads. Its rule: a state is served only when it is complete, i.e. a readable
snapshot of sequence S (or an empty start, S = 0) and then every log record after S,
S+1, S+2, ... up to the last valid one in either log, without a gap. It tries
snapshot.bin, then snapshot.prev.bin, then an empty start, and refuses
(`RecoveryRefusedError`) when none is complete. So a corrupt or stale snapshot.bin (one that
the logs have outrun) is rebuilt from the previous snapshot and the logs, or refused;
never served short. A corrupt log.wal (damage that valid records follow, see
contrastkit.service.index.embedded.wal) is refused outright: nothing is cut, the files stay as they
are.

A snapshot whose checksum holds but whose dimension is not collection.json's refuses the
collection at once (`MetaError`), rather than being passed over as damaged: the file is
intact, so it is collection.json (or the pairing of the two) that is wrong, and a rebuild
from the logs would read their vectors at the wrong width and set the good snapshot aside.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from contrastkit.service.index.embedded.snapshot import (
    CorruptSnapshotError,
    Snapshot,
    SnapshotDimError,
    read_snapshot,
)
from contrastkit.service.index.embedded.wal import Entry, LogScan, scan_log

META, SNAP, PREV_SNAP, LOG, PREV_LOG = (
    "collection.json",
    "snapshot.bin",
    "snapshot.prev.bin",
    "log.wal",
    "log.prev.wal",
)
SNAP_TMP = f".{SNAP}.tmp"  # a snapshot being written; committed by its rename to SNAP
DATA_FILES = (SNAP, PREV_SNAP, LOG, PREV_LOG)  # what a folder holding a collection's data has


class RecoveryRefusedError(Exception):
    """No complete state can be read from the files; the message says why."""


class MetaError(RecoveryRefusedError):
    """collection.json is missing, unreadable, fails its checksum, or disagrees with the
    data files: what the data is (its dimension, its model) is unknown, so none of it is
    served. `contrastive index repair` cannot salvage this; it says what the files hold."""


def holds_collection(folder: Path) -> bool:
    """Whether `folder` holds a collection: its collection.json, or any of its data files
    (a folder whose collection.json was lost still holds one: it is refused, not ignored)."""
    return any((folder / name).exists() for name in (META, *DATA_FILES))


@dataclass
class Base:
    """Where a recovery starts: a snapshot, or (snapshot None) an empty collection."""

    name: str  # SNAP, PREV_SNAP, or "an empty start"
    snapshot: Snapshot | None
    primary: bool  # SNAP, or an empty start of a collection that never had a snapshot

    @property
    def seq(self) -> int:
        return self.snapshot.seq if self.snapshot is not None else 0


@dataclass
class Plan:
    """A complete state: `base`, then `chain` (records S+1, S+2, ... in order)."""

    base: Base
    chain: list[tuple[LogScan, Entry]]
    live: LogScan  # log.wal as read
    rebuilt: bool  # not simply snapshot.bin + log.wal: rewrite the state as a new snapshot
    notes: list[str] = field(default_factory=list)  # damage tolerated, for the log

    @property
    def torn_at(self) -> int | None:
        """log.wal's valid length when a torn tail follows it (to be cut), else None."""
        return self.live.valid_end if self.live.torn_tail is not None else None

    @property
    def live_records(self) -> int:
        return sum(scan is self.live for scan, _ in self.chain)


def plan(folder: Path, dim: int) -> Plan:
    """Read the folder's snapshots and logs -> the Plan to serve; RecoveryRefusedError if none.

    log.prev.wal is read only when the usual state does not stand alone: snapshot.bin
    readable and log.wal's first record at most the snapshot's next. Every record of
    log.prev.wal precedes log.wal's first, so it holds nothing after the snapshot then,
    and after a bulk load it can be as large as the collection. (An empty log.wal proves
    nothing: a stale snapshot.bin is caught only by log.prev.wal's records.)"""
    live = scan_log(folder / LOG)
    why = live.corruption()
    if why is not None:
        raise RecoveryRefusedError(f"{why}; nothing was cut")
    tried: list[str] = []
    prev: list[LogScan] = []  # log.prev.wal, once scanned
    for base in _bases(folder, dim, tried):
        continues = bool(live.entries) and live.entries[0].seq <= base.seq + 1
        if base.primary and base.snapshot is not None and continues:
            chain, gap = _chain(base, [live])
            if gap is None:  # the usual open: snapshot.bin, then log.wal from its next record
                return Plan(base, chain, live, rebuilt=False)
        if not prev:
            prev.append(scan_log(folder / PREV_LOG))
        prev_log = prev[0]
        chain, gap = _chain(base, [prev_log, live])
        if gap is not None:
            tried.append(gap)
            continue
        primary = base.primary and all(scan is live for scan, _ in chain)
        if prev_log.damage and not primary:  # its damage may hide records this base needs
            tried.append(f"{PREV_LOG}, needed after {base.name}, is damaged")
            continue
        if base.snapshot is None and not chain and not base.primary:
            tried.append("no snapshot is readable and no log record is left to rebuild from")
            continue
        notes = [f"{PREV_LOG} is damaged, but not needed"] if prev_log.damage else []
        return Plan(base, chain, live, rebuilt=not primary, notes=notes)
    raise RecoveryRefusedError("; ".join(tried))


def _bases(folder: Path, dim: int, tried: list[str]) -> Iterator[Base]:
    """snapshot.bin, snapshot.prev.bin (each if readable), then an empty start; read lazily."""
    evidence = (folder / PREV_LOG).exists()  # it exists only once a snapshot was written
    for name, label in ((SNAP, ""), (PREV_SNAP, "the previous snapshot ")):
        path = folder / name
        if not path.exists():
            if name == SNAP and evidence:
                tried.append(f"{SNAP} is missing")
            continue
        evidence = True
        try:
            snap = read_snapshot(path, dim)
        except SnapshotDimError as e:  # an intact file of another width: no rebuild
            raise MetaError(
                f"{name} (its checksum intact) holds vectors of dimension {e.found}, but "
                f"{META} says {dim}"
            ) from None
        except CorruptSnapshotError as e:
            tried.append(f"{label}{e}")
            continue
        yield Base(name, snap, primary=name == SNAP)
    yield Base("an empty start", None, primary=not evidence)


def _chain(base: Base, logs: list[LogScan]) -> tuple[list[tuple[LogScan, Entry]], str | None]:
    """The records after base.seq, in order -> (them, None), or (partial, why) at a gap.

    Records up to base.seq are skipped: they are in the snapshot (a log can hold them
    after a crash between a snapshot and the log's rotation)."""
    seq = base.seq
    out: list[tuple[LogScan, Entry]] = []
    for scan in logs:
        for entry in scan.entries:
            if entry.seq <= seq:
                continue
            if entry.seq != seq + 1:
                return out, (
                    f"after {base.name} (record {base.seq}) the logs go from record {seq} to "
                    f"{entry.seq}: the records between are lost"
                )
            out.append((scan, entry))
            seq = entry.seq
    return out, None
