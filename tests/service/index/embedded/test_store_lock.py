"""One process per collections folder: a second store is refused while the first is open,
in this process or another, and the lock goes when its holder closes or dies (kill -9)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from contrastkit.service.cli import main
from contrastkit.service.index.embedded.store import CollectionStore, StoreLockedError
from tests.helpers import wait_until

HOLD = """
import sys, time
from pathlib import Path
from contrastkit.service.index.embedded.store import CollectionStore
store = CollectionStore(Path(sys.argv[1]))
store.create("c", "raw", 4)
print("open", flush=True)
time.sleep(3600)  # until the test kills it
"""


def test_a_second_store_on_the_same_folder_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    first = CollectionStore(tmp_path)
    first.create("c", "raw", 4)
    with pytest.raises(StoreLockedError, match="open in another process"):
        CollectionStore(tmp_path)
    first.close()
    second = CollectionStore(tmp_path)
    assert [c.name for c in second.list()] == ["c"]
    second.close()


def test_the_lock_holds_across_processes_and_dies_with_its_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreLockedError):
            CollectionStore(tmp_path)
        # the in-process index CLI says so, instead of writing beside a running server
        argv = ["index", "search", "c", "x", "--model", "builtin", "--collections-dir"]
        assert main([*argv, str(tmp_path)]) == 1
        assert "open in another process" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    def reopened() -> bool:
        try:
            CollectionStore(tmp_path).close()
            return True
        except StoreLockedError:
            return False

    # the kernel releases the lock with the process
    wait_until(reopened, 120, "the lock released after its holder died")
