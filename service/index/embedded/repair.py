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

collection.json is not salvaged: it says what the data is (model, dimension, index), and
the other files do not hold that (a snapshot's header has the dimension, nothing has the
model id). When it is missing, fails its checksum or disagrees with the data (meta,
recovery.MetaError), the repair changes nothing: it lists what the files hold (each
snapshot's and log's dimension) and says how to restore the file (`explain_meta`). An
unsealed collection.json (written before checksums) is sealed once the data agrees with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.service.index.embedded.meta import (
    CHECKSUM,
    UNSEALED_VERSION,
    CollectionMeta,
    MetaMissingError,
    read_meta,
    write_meta,
)
from contrastkit.service.index.embedded.recovery import (
    LOG,
    META,
    PREV_LOG,
    PREV_SNAP,
    SNAP,
    SNAP_TMP,
    MetaError,
    RecoveryRefusedError,
    holds_collection,
    plan,
)
from contrastkit.service.index.embedded.snapshot import (
    CorruptSnapshotError,
    Snapshot,
    SnapshotDimError,
    encode_snapshot,
    read_header,
    read_snapshot,
)
from contrastkit.service.index.embedded.wal import (
    UPSERT,
    Entry,
    LogScan,
    RecordShapeError,
    scan_log,
    vector_width,
)
from contrastkit.service.index.fsutil import fsync_dir, unused_path, write_file
from contrastkit.service.index.types import CollectionError, check_name

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
            except SnapshotDimError as e:  # intact: collection.json is what is wrong
                raise MetaError(
                    f"{name} (its checksum intact) holds vectors of dimension {e.found}, "
                    f"but {META} says {dim}"
                ) from None
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
    src: dict[str, str] = {}
    if salvage.base is not None:
        for i, id_ in enumerate(salvage.base.ids):
            vec[id_], meta[id_] = salvage.base.vectors[i], salvage.base.metadata[i]
        src.update(salvage.base.sources)
    for scan, entry in salvage.records:
        try:
            rec = scan.record(entry, dim)
        except RecordShapeError as e:  # its CRC holds: collection.json is what is wrong
            raise MetaError(f"{scan.path.name}: {e}, but {META} says dim {dim}") from None
        for i, id_ in enumerate(rec.ids):
            if rec.op == UPSERT:
                assert rec.vectors is not None
                vec[id_], meta[id_] = rec.vectors[i], rec.metadata[i]
                source = rec.sources[i] if rec.sources else None
                if source is None:  # an upsert replaces the item, its source included
                    src.pop(id_, None)
                else:
                    src[id_] = source
            else:
                vec.pop(id_, None)
                meta.pop(id_, None)
                src.pop(id_, None)
    ids = list(vec)
    vectors = np.stack([vec[i] for i in ids]) if ids else np.zeros((0, dim), np.float32)
    seq = max(salvage.last, salvage.base_seq)
    return Snapshot(seq, ids, [meta[i] for i in ids], vectors, sources=src)


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
    finds and does -> whether anything was changed. MetaError, nothing changed, when
    collection.json cannot be trusted: its message says what to do (explain_meta)."""
    say(f"checking {folder}")
    try:
        meta = read_meta(folder)
        salvage = survey(folder, meta.dim)
        for line in salvage.findings:
            say(f"  {line}")
        if not needs_repair(folder, meta.dim, salvage):
            if meta.sealed:
                say("nothing to repair: every file is intact and the collection opens as it is")
                return False
            return _seal(folder, meta, salvage, say)
        say(
            f"salvaging: {salvage.base_name}"
            + (f" (up to record {salvage.base_seq})" if salvage.base is not None else "")
            + f", then {len(salvage.records)} log records"
        )
        snap = rebuild(salvage, meta.dim)  # before any file moves: it checks every record
    except MetaError as e:
        say(f"what the data files hold, whatever {META} says:")
        for line in data_findings(folder):
            say(f"  {line}")
        raise MetaError(explain_meta(folder, e)) from None
    damaged = replace_files(folder, snap)
    if not meta.sealed:  # the data agreed with it: every record was read at its dimension
        write_meta(folder, meta)
        say(f"{META} had no checksum (written by an older version): sealed with one")
    _verify(folder, len(snap.ids))
    lost = f"lost {_ranges(salvage.lost)}" if salvage.lost else "nothing lost"
    say(f"repaired: {len(snap.ids)} items up to record {snap.seq}; {lost}")
    if any("unreadable" in line for line in salvage.findings):
        say("  (an unreadable snapshot may also have held records newer than any log shows)")
    say(f"the old files are in {damaged}")
    return True


def _seal(folder: Path, meta: CollectionMeta, salvage: Salvage, say: Say) -> bool:
    """An intact collection whose collection.json has no checksum: check that the data
    agrees with it (every log record after the snapshot read at its dimension; the
    snapshots' dimensions were checked by survey), then write it sealed -> True."""
    count = len(rebuild(salvage, meta.dim).ids)  # MetaError when a record disagrees
    write_meta(folder, meta)
    _verify(folder, count)
    say(
        f"nothing else to repair; {META} had no checksum (written by an older version): "
        "checked against the snapshot and the logs, and sealed with one"
    )
    return True


def data_findings(folder: Path) -> list[str]:
    """What the data files say they hold, whatever collection.json says: one line per file
    (a snapshot's items, records and dimension; a log's records and vector width)."""
    lines = []
    for name in (SNAP, PREV_SNAP):
        if (folder / name).exists():
            try:
                head = read_header(folder / name)
                lines.append(
                    f"{name}: up to record {head['seq']}, {len(head['ids'])} items of "
                    f"dimension {head.get('dim')}"
                )
            except CorruptSnapshotError as e:
                lines.append(f"{name}: unreadable ({e})")
    for name in (PREV_LOG, LOG):
        scan = scan_log(folder / name)
        if scan.exists:
            widths = sorted({w for e in scan.entries if (w := vector_width(scan.payload(e)))})
            dims = ", ".join(map(str, widths)) if widths else "none: no vectors"
            lines.append(f"{_describe_log(scan)}; vectors of dimension {dims}")
    return lines


def _found_dim(folder: Path) -> int | None:
    """The one dimension every readable snapshot and logged vector has, else None."""
    dims: set[Any] = set()
    for name in (SNAP, PREV_SNAP):
        with contextlib.suppress(OSError, CorruptSnapshotError):  # absent or unreadable
            dims.add(read_header(folder / name).get("dim"))
    for name in (PREV_LOG, LOG):
        scan = scan_log(folder / name)
        dims |= {w for e in scan.entries if (w := vector_width(scan.payload(e)))}
    if len(dims) != 1:
        return None
    dim = dims.pop()
    return dim if isinstance(dim, int) and not isinstance(dim, bool) else None


def explain_meta(folder: Path, e: MetaError) -> str:
    """Why the repair cannot go on when collection.json cannot be trusted, and what the
    operator can do: the file cannot be made again from the data (no file holds the model
    id, the index spec or the creation time), so it must be restored, or written by hand
    without a checksum (then checked against the data on open, and sealed by a repair)."""
    dim = _found_dim(folder)
    told = f"hold {dim}-d vectors" if dim else "agree on no one dimension"
    by_hand = json.dumps(
        {
            "format_version": UNSEALED_VERSION,
            "name": folder.name,
            "model_id": "<the id of the model that made these vectors>",
            "dim": dim if dim else "<their dimension>",
            "index": {"kind": "auto"},
            "created_at": "<when it was created, e.g. 2025-01-31T12:00:00+00:00>",
        }
    )
    if isinstance(e, MetaMissingError):
        what = f"The repair cannot rebuild {META} from the other files"
    else:
        what = f"The repair leaves {META} as it is: it cannot tell what the file should say"
    return (
        f"{e}.\n{what} (the data files {told}; no file holds the model id or the index "
        f"spec). Restore {META} from a backup; or, knowing what it held, write it by hand "
        f'without a "{CHECKSUM}", e.g.:\n'
        f"  {by_hand}\n"
        "A file without a checksum is checked against the snapshot and the logs when the "
        "collection opens; run this repair again to seal it with one. Nothing was changed."
    )


def _verify(folder: Path, count: int) -> None:
    from contrastkit.service.index.embedded.collection import (
        Collection,  # faiss and torch: only once needed
    )

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
    from contrastkit.service.index.embedded.folder_lock import StoreLockedError, lock_folder

    root = Path(collections_dir)
    prefix = "contrastive index repair"
    try:
        folder = root / check_name(name)
    except CollectionError as e:
        print(f"{prefix}: {e}", file=sys.stderr)
        return EXIT_ERROR
    if not folder.is_dir() or not holds_collection(folder):
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
    except (MetaError, CollectionError, OSError, ValueError, KeyError) as e:
        print(f"{prefix}: {e}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        lock.close()
    return EXIT_OK
