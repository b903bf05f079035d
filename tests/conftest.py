from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _pytest.mark.expression import Expression  # pytest's own -m parser

torch.set_num_threads(max(1, torch.get_num_threads()))
# No app of the tests traces ONNX graphs in the background (a minute of CPU each), not even
# one a module-scoped fixture builds before the per-test fixtures run; the tests of that
# move turn it on (tests/service/test_onnx_upgrade.py).
os.environ["CONTRASTIVE_AUTO_ONNX"] = "false"


# Modules whose collection alone costs a minute or more, with the marker all their tests
# carry: schemathesis derives its coverage cases from the OpenAPI document while it
# collects. A run that deselects the marker (the default run: "not slow") skips the module
# before it is imported, instead of building the cases and then deselecting every one.
COSTLY_TO_COLLECT = {"tests/service/api/test_schemathesis.py": "slow"}


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not collection_path.is_relative_to(config.rootpath):
        return None
    marker = COSTLY_TO_COLLECT.get(collection_path.relative_to(config.rootpath).as_posix())
    if marker is None or not config.option.markexpr:
        return None
    selected = Expression.compile(config.option.markexpr).evaluate(lambda name: name == marker)
    return True if not selected else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _collections_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every app a test builds keeps its collections in that test's temp folder."""
    monkeypatch.setenv("CONTRASTIVE_COLLECTIONS_DIR", str(tmp_path / "collections"))


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """A command run in-process configures the root logger for its process (`serve`'s log
    setup, the training commands' INFO on stderr); undo it after the test, so that the next
    test in this process starts from the logging it would have alone, whatever ran before."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in root.handlers[:]:
        if type(handler).__module__.startswith("contrastkit."):  # pytest's own stay
            root.removeHandler(handler)
    root.setLevel(level)
