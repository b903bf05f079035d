"""The training commands' help is derived from what it describes: `--method` lists the
method registry, so a new method file appears there without an edit."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from contrastkit.training.cli import build_training_parser
from contrastkit.training.methods import METHODS, method_names


def test_method_help_lists_exactly_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_training_parser(["train", "--help"]).parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    listed = re.search(r"--method METHOD ((?:[\w-]+(?: \| )?)+)", text)
    assert listed is not None
    assert listed.group(1).split(" | ") == method_names() == sorted(METHODS)
    assert {"simclr", "moco", "byol", "swav", "clip", "dino"} <= set(method_names())


LISTING_IMPORTS = """
import contextlib, io, sys
from contrastkit.training.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    with contextlib.suppress(SystemExit):
        main(["train", "--help"])
print(sorted(m for m in ("torchvision", "transformers", "open_clip", "timm") if m in sys.modules))
"""


def test_listing_the_methods_loads_no_vision_or_text_library() -> None:
    """Deriving the help from the registry imports every method module: they must not
    pull in torchvision or the text towers' stacks at import (only when a model is built)."""
    out = subprocess.run(
        [sys.executable, "-c", LISTING_IMPORTS], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
