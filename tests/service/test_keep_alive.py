"""The server keeps idle connections open longer than clients keep theirs: the client
closes an idle connection, never the server just as the client sends on it."""

from __future__ import annotations

from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from contrastkit.service import shutdown
from contrastkit.service.settings import Settings

# httpx's default expiry of idle pooled connections (httpx.Limits.keepalive_expiry)
HTTPX_IDLE_EXPIRY_S = 5.0


def _config(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> uvicorn.Config:
    """The uvicorn.Config that shutdown.run serves `settings` with (nothing is served)."""
    seen: list[uvicorn.Config] = []

    class Server:
        started = False  # run() returns at once: a start-up that failed

        def __init__(self, config: uvicorn.Config, _: Any) -> None:
            seen.append(config)

        def run(self) -> None: ...

    monkeypatch.setattr(shutdown, "GracefulServer", Server)
    app = FastAPI()
    app.state.service = None
    shutdown.run(app, settings, exit_process=False)
    return seen[0]


def test_idle_connections_outlive_the_clients_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(monkeypatch, Settings())
    assert config.timeout_keep_alive > HTTPX_IDLE_EXPIRY_S  # uvicorn's own default: 5 s
    assert _config(monkeypatch, Settings(keep_alive_seconds=12.5)).timeout_keep_alive == 12.5
