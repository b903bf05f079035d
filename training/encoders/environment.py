"""What every benchmark result records besides its figures, and how it is written.

A figure means little without the machine, the software and the code that produced it,
so every `contrastive bench ...` JSON starts with `environment()`. Standalone (torch and
the standard library only), so any benchmark, in training or elsewhere, can use it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

# Where `git` is asked for the commit: the checkout this module lives in.
_ROOT = Path(__file__).resolve().parents[2]
# A copy of the tree without .git (a lent GPU machine) can pass the commit in instead.
COMMIT_ENV = "CONTRASTIVE_GIT_COMMIT"


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (or the platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(_ROOT), *args], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> str:
    """Short commit of this checkout, '+dirty' when tracked files changed; else $COMMIT_ENV."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return os.environ.get(COMMIT_ENV, "")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+dirty" if dirty else "")


def environment(device: str | torch.device) -> dict[str, Any]:
    """{date (UTC ISO), device, device_name, cpu_count, torch, torchvision, cuda, cudnn,
    git_commit, python} for a result measured on `device`."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    try:
        import torchvision

        tv_version: str | None = torchvision.__version__
    except ImportError:
        tv_version = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": name,
        "cpu_count": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torchvision": tv_version,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "git_commit": git_commit(),
        "python": platform.python_version(),
    }


def timestamp(env: dict[str, Any]) -> str:
    """'2026-11-27T221530' from environment()'s date: a file-name-safe stamp."""
    return str(env["date"])[:19].replace(":", "")


def write_json(path: str | Path, result: dict[str, Any]) -> Path:
    """Write `result` atomically (a reader, or a run killed mid-write, never sees half)."""
    return write_text(path, json.dumps(result, indent=2, default=str) + "\n")


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over `path` (atomic
    on one file system), creating the folder first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-style table, as docs/benchmarks.md holds them."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
