from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, wait_ready


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


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """One model thread for a Batcher under test."""
    executor = ThreadPoolExecutor(1)
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two tiny CLIP exports with different weights: a collection's old model and the new
    one it moves to (the migration tests)."""
    from tests.helpers import old_and_new_exports

    old, new = old_and_new_exports(tmp_path_factory.mktemp("models"))
    return str(old), str(new)
