"""Run a `contrastive bench` module in-process, as its tests do."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import torch


def run_bench(bench: ModuleType, flags: str, path: Path) -> tuple[dict[str, Any], str]:
    """bench.run with `flags` and --json PATH -> (the JSON it wrote, what it printed).

    The caller's torch thread count is put back: benches may set their own (one thread
    keeps two OpenMP threads on a busy 2-core machine from stalling at every barrier)."""
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([*flags.split(), "--json", str(path)])
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert bench.run(args) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(path.read_text()), out.getvalue()
