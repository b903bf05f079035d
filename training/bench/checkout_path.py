"""A path entry that imports this checkout as `contrastkit`, for a Python that has not installed it.

The repository's folders are service/ and training/; an install maps them onto
`contrastkit.service` and `contrastkit.training` (setup.py). A subprocess of another
interpreter (the lightly peer's venv of `bench quality --quick`) gets the same names from a
folder of two symlinks on its PYTHONPATH: `contrastkit` is a namespace package, so the folder
needs no file of its own. scripts/mypy.sh and scripts/gpu_check.sh run this file as a
script for the same folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("service", "training")


def checkout_path(folder: Path) -> Path:
    """Makes folder/contrastkit/{service,training} -> this checkout's folders; returns `folder`
    (put it on PYTHONPATH)."""
    parent = folder / "contrastkit"
    parent.mkdir(parents=True, exist_ok=True)
    for name in FOLDERS:
        link = parent / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(REPO / name, target_is_directory=True)
    return folder


if __name__ == "__main__":  # `python training/bench/checkout_path.py DIR`: no install needed
    checkout_path(Path(sys.argv[1]))
