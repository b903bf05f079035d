"""Fixtures of the API tests only: the real built-in model behind the real app, and the
photos it is asked about."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import skimage.data
from fastapi.testclient import TestClient

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from tests.helpers import image_bytes, wait_ready


@pytest.fixture(scope="session")
def cat_jpeg() -> bytes:
    return image_bytes(skimage.data.chelsea(), "JPEG", quality=92)


@pytest.fixture(scope="session")
def coffee_jpeg() -> bytes:
    return image_bytes(skimage.data.coffee(), "JPEG", quality=92)


@pytest.fixture(scope="session")
def builtin_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The real built-in model behind the real app (loaded once per test session)."""
    folder = tmp_path_factory.mktemp("builtin-collections")
    app = create_app(Settings(model="builtin", device="cpu", collections_dir=str(folder)))
    with TestClient(app) as client:
        wait_ready(client)
        yield client
