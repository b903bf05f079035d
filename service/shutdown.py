"""Graceful shutdown: the uvicorn server that `contrastive serve` runs.

On SIGTERM (what Kubernetes, Docker and systemd send):

1. at once, the service marks itself draining: /readyz answers 503 and every response
   carries `Connection: close`, so load balancers and keep-alive clients move away;
2. for `drain_seconds` it keeps accepting and serving requests (a load balancer needs a
   moment to notice; requests routed meanwhile must not fail);
3. it stops accepting connections and waits up to `graceful_timeout` seconds for the
   requests in flight (any still running after that are cancelled);
4. the app's lifespan shutdown stops the batchers and closes the collections (each log is
   already fsynced per write; a snapshot is written where the log holds records);
5. the process exits 0.

SIGINT (Ctrl-C) does the same without the drain delay. A second signal ends the drain at
once; a third forces an exit without waiting for requests or flushing (every acknowledged
write is still in an fsynced log).

Unlike plain uvicorn, the signal is not re-raised after the shutdown: a clean drain is a
clean exit (status 0), not death by signal (143).
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("contrastive.service")


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose exit signals drain first (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.state = state
        self.signals_seen = 0
        self.stop_at: float | None = None  # monotonic time at which the drain ends

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: set flags only; on_tick acts on them.
        self.signals_seen += 1
        if self.signals_seen == 1:
            self.state.draining = True
            delay = self.state.settings.drain_seconds if sig == signal.SIGTERM else 0.0
            self.stop_at = time.monotonic() + delay
            log.info(
                "%s: draining (readyz 503) for %.1f s, then waiting up to %.1f s for "
                "requests in flight",
                signal.Signals(sig).name,
                delay,
                self.state.settings.graceful_timeout,
            )
        elif self.signals_seen == 2:
            self.stop_at = time.monotonic()
        else:
            self.should_exit = self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.stop_at is not None and time.monotonic() >= self.stop_at:
            self.should_exit = True
        return await super().on_tick(counter)


def run(app: FastAPI, settings: Settings) -> None:
    """Serve `app` (made by create_app) until a signal ends it as described above."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        # json: no logging config of uvicorn's own, so its records go to the root logger's
        # JSON handler (service.observability.logs) rather than to its text handlers
        log_config=None if settings.log_format == "json" else LOGGING_CONFIG,
        # uvicorn types it int, but uses it as asyncio.wait_for's timeout: a float works
        timeout_graceful_shutdown=settings.graceful_timeout,  # type: ignore[arg-type]
    )
    server = GracefulServer(config, app.state.service)
    server.run()
    log.info("stopped cleanly")
