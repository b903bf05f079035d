from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.helpers import FakeEncoder, wait_ready

torch.set_num_threads(max(1, torch.get_num_threads()))


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


@pytest.fixture
def fake_app_factory() -> Iterator[object]:
    """make(settings=None, encoder=None) -> a started TestClient over a FakeEncoder."""
    clients: list[TestClient] = []

    def make(settings: Settings | None = None, encoder: FakeEncoder | None = None) -> TestClient:
        app = create_app(settings or Settings(), encoder=encoder or FakeEncoder())
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)
