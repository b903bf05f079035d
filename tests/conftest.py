from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))
# No app of the tests traces ONNX graphs in the background (a minute of CPU each), not even
# one a module-scoped fixture builds before the per-test fixtures run; the tests of that
# move turn it on (tests/service/test_onnx_upgrade.py).
os.environ["CONTRASTIVE_AUTO_ONNX"] = "false"


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
