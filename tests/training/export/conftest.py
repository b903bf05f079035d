from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tmp_export(tmp_path: Path) -> Path:
    """Where a test writes its export directory (not created: export makes it)."""
    return tmp_path / "export"
