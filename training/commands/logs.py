"""The CLI's log lines on stderr: `INFO contrastive.train: ...`."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

FORMAT = "%(levelname)s %(name)s: %(message)s"


class CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler that writes to `sys.stderr` as it is at each record, not as it was when
    the handler was made: a caller (a test's capture, a notebook) may replace sys.stderr
    between commands, and a handler holding the old, closed stream fails on every line."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr


def log_to_stderr() -> None:
    """INFO and above on stderr, installed once per process (a second command in the same
    process reuses the handler)."""
    root = logging.getLogger()
    if not any(isinstance(h, CurrentStderr) for h in root.handlers):
        handler = CurrentStderr()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
