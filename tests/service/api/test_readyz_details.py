"""/readyz is open to probes: with API keys set, it tells everyone how many collections are
refused, and only a caller with a key which ones and why (the reasons name files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from contrastkit.service.settings import Settings

Factory = Callable[..., TestClient]
WHY = "corrupt: snapshot.bin (mapped since the open) changed under the server"


def _refuse_one(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's collection store (whatever its engine) reports one refused collection."""
    store = client.app.state.service.store  # type: ignore[attr-defined]
    monkeypatch.setattr(type(store), "problems", property(lambda self: {"a": WHY}))


@pytest.mark.parametrize(
    ("keys", "headers", "details"),
    [
        (None, {}, True),  # no keys: everyone sees everything, as before
        (["user"], {}, False),
        (["user"], {"Authorization": "Bearer wrong"}, False),
        (["user"], {"Authorization": "Bearer user"}, True),
        (["user"], {"Authorization": "Bearer boss"}, True),  # an admin key counts too
    ],
    ids=["no-keys", "no-key-sent", "wrong-key", "api-key", "admin-key"],
)
def test_refused_collections_are_named_only_to_a_caller_with_a_key(
    fake_app_factory: Factory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    keys: list[str] | None,
    headers: dict[str, str],
    details: bool,
) -> None:
    extra = {"api_keys": keys, "admin_keys": ["boss"]} if keys else {}
    client = fake_app_factory(Settings(collections_dir=str(tmp_path), **extra))
    _refuse_one(client, monkeypatch)
    r = client.get("/readyz", headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready" and body["collections_refused_count"] == 1
    assert body.get("collections_refused") == ({"a": WHY} if details else None)
    assert ("snapshot.bin" in r.text) == details


def test_no_refused_collection_adds_nothing(fake_app_factory: Factory, tmp_path: Path) -> None:
    body = fake_app_factory(Settings(collections_dir=str(tmp_path))).get("/readyz").json()
    assert "collections_refused" not in body and "collections_refused_count" not in body
