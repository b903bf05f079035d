"""The training commands' help is derived from what it describes: `--method` lists the
method registry, so a new method file appears there without an edit."""

from __future__ import annotations

import re

import pytest

from training.cli import build_training_parser
from training.methods import METHODS, method_names


def test_method_help_lists_exactly_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_training_parser(["train", "--help"]).parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    listed = re.search(r"--method METHOD ((?:[\w-]+(?: \| )?)+)", text)
    assert listed is not None
    assert listed.group(1).split(" | ") == method_names() == sorted(METHODS)
    assert {"simclr", "moco", "byol", "swav", "clip", "dino"} <= set(method_names())
