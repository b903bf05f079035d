"""What an open reads: log.prev.wal only when snapshot.bin and log.wal do not stand alone
(contrastkit.service.index.embedded.recovery.plan). After a bulk load the previous log can be as
large as the collection, so the usual open must not read it; every other case still must."""

from __future__ import annotations

from pathlib import Path

import pytest

import contrastkit.service.index.embedded.recovery as recovery
from contrastkit.service.index.embedded.recovery import LOG, PREV_LOG
from contrastkit.service.index.embedded.store import CollectionStore
from contrastkit.service.index.types import IndexSpec
from tests.helpers import unit_rows


def _store(root: Path) -> CollectionStore:
    return CollectionStore(root, snapshot_every=10**9)


def _write(store: CollectionStore, prefix: str, n: int = 5) -> None:
    v = unit_rows(n, 8, len(prefix))
    store.get("c").upsert([f"{prefix}{i}" for i in range(n)], v, [{"i": i} for i in range(n)])


def _scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = recovery.scan_log

    def spy(path: Path) -> recovery.LogScan:
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(recovery, "scan_log", spy)
    return seen


def test_the_usual_open_does_not_read_the_previous_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    store.create("c", "m", 8, IndexSpec())
    _write(store, "a", 50)
    store.get("c").snapshot()  # log.prev.wal now holds all 50
    _write(store, "b")  # and log.wal continues the snapshot
    store.close()
    folder = next(tmp_path.glob("*/" + PREV_LOG)).parent
    seen = _scans(monkeypatch)
    store = _store(tmp_path)
    assert (store.get("c").count, store.get("c").status) == (55, "ok")
    assert seen == [LOG]
    store.close()
    # once log.wal no longer continues it (emptied here), the previous log is read again
    (folder / LOG).write_bytes(b"")
    seen.clear()
    store = _store(tmp_path)
    assert seen == [LOG, PREV_LOG]
    assert store.get("c").count == 50  # (a log.wal emptied by hand: only the reads matter)
    store.close()
