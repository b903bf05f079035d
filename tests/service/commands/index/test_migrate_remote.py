"""`contrastive index migrate --url`: the server migrates (POST /v1/admin/migrations),
loading the new model first when it does not serve it; the command follows and reports
with the exit statuses of the in-process path."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from contrastkit.service.app import create_app
from contrastkit.service.cli import main
from contrastkit.service.settings import Settings
from tests.helpers import old_and_new_exports, wait_until

BOSS = {"Authorization": "Bearer boss"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real server on the old model only (admin key `boss`), collection `docs` of text
    items whose sources are their texts -> (its URL, the new model's export)."""
    old, new = old_and_new_exports(tmp_path)
    settings = Settings(
        model=str(old), device="cpu", admin_keys=["boss"], collections_dir=str(tmp_path / "c")
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    wait_until(lambda: _ready(url), timeout=120, what="the server ready")
    items = [{"id": f"d{i}", "text": f"doc {i}", "source": f"doc {i}"} for i in range(9)]
    with httpx.Client(base_url=url, headers=BOSS) as http:
        assert http.post("/v1/collections", json={"name": "docs"}).status_code == 201
        assert http.post("/v1/collections/docs/items", json={"items": items}).status_code == 200
    yield url, str(new)
    uv.should_exit = True
    thread.join(30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def test_the_server_loads_the_model_migrates_and_switches(
    server: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, new = server
    argv = ["index", "migrate", "docs", "--to-model", new, "--alias", "live", "--url", url]
    assert main([*argv, "--admin-key", "boss", "--batch", "4"]) == 0
    out, err = capsys.readouterr()
    assert f"loading {new!r} on the server first" in err
    assert "migrated 'docs' into" in out and "alias 'live' ->" in out
    live = httpx.get(f"{url}/v1/collections/live", headers=BOSS).json()
    assert live["count"] == 9 and live["name"] != "docs"
    assert live["migration"]["state"] == "switched"


def test_missing_sources_exit_3_and_list_them(
    server: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, new = server
    bare = {"items": [{"id": "bare", "text": "no source"}]}
    httpx.post(f"{url}/v1/collections/docs/items", json=bare, headers=BOSS).raise_for_status()
    argv = ["index", "migrate", "docs", "--to-model", new, "--alias", "live", "--url", url]
    assert main([*argv, "--admin-key", "boss"]) == 3
    err = capsys.readouterr().err
    assert "missing: 'bare' (None): no source stored" in err
    assert "alias 'live' not switched" in err
    assert httpx.get(f"{url}/v1/aliases", headers=BOSS).json()["aliases"] == []


def test_a_wrong_admin_key_is_one_line_and_exit_1(
    server: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, new = server
    argv = ["index", "migrate", "docs", "--to-model", new, "--alias", "live", "--url", url]
    assert main([*argv, "--admin-key", "wrong"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("contrastive index migrate: 401"), err
