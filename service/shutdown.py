"""Graceful shutdown: the uvicorn server that `contrastive serve` runs.

On SIGTERM (what Kubernetes, Docker and systemd send):

1. at once, the service marks itself draining: /readyz answers 503 and every response
   carries `Connection: close`, so load balancers and keep-alive clients move away;
2. for `drain_seconds` it keeps accepting and serving requests (a load balancer needs a
   moment to notice; requests routed meanwhile must not fail);
3. it stops accepting connections, but first reads what has already arrived: connections
   waiting in the listen backlog are accepted and every request that reached the server
   is parsed, so it is in flight rather than cut off (uvicorn alone would close such a
   connection without a reply, and after a busy moment of the event loop that is every
   request that came in meanwhile); a connection that is open but has not yet sent a
   whole request gets `FIRST_REQUEST_GRACE` seconds to do so; idle keep-alive
   connections are closed;
4. it waits up to `graceful_timeout` seconds for the requests in flight (any still
   running after that are cancelled); each connection closes after its answer;
5. the app's lifespan shutdown stops the batchers and closes the collections (each log is
   already fsynced per write; a snapshot is written where the log holds records);
6. the process exits 0 at once, skipping the interpreter's teardown (seconds of garbage
   collection with torch loaded, during which the process holds its pod for nothing):
   everything has been closed and flushed by then.

SIGINT (Ctrl-C) does the same without the drain delay. A second signal ends the drain at
once; a third forces an exit without waiting for requests or flushing (every acknowledged
write is still in an fsynced log).

Unlike plain uvicorn, the signal is not re-raised after the shutdown: a clean drain is a
clean exit (status 0), not death by signal (143).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from contrastkit.service.settings import Settings
from contrastkit.service.state import ServiceState

log = logging.getLogger("contrastive.service")

# How long, once the drain ends, a connection that is open but has not sent a whole request
# yet may take to send one (a client that connected during the drain is about to).
FIRST_REQUEST_GRACE = 1.0
# Turns of the event loop that read what has arrived: accept the backlog, then read the
# accepted connections' first bytes (each needs one poll for I/O).
_SETTLE_TURNS = 5


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
            log.info("%s again: the drain ends now", signal.Signals(sig).name)
        else:
            self.should_exit = self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.stop_at is not None and time.monotonic() >= self.stop_at:
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting without cutting off a request that has arrived, then uvicorn's
        own shutdown (step 3 of the module docstring, then 4 and 5).

        uvicorn's shutdown runs from a timer callback: after a busy moment of the event loop
        (a long garbage collection, CPU-bound work in the loop) it runs before the loop has
        polled for I/O, then closes the listening sockets (resetting the connections in the
        backlog) and every connection without a parsed request, among them those whose
        request is sitting unread in the socket buffer."""
        if not self.force_exit:
            await _settle()  # accept the backlog, read what the connections have sent
        for server in self.servers:
            server.close()  # stop accepting (uvicorn's shutdown closes them again: no-op)
        if not self.force_exit:
            await _settle()  # read the first bytes of the connections just accepted
            await self._wait_first_requests(time.monotonic() + FIRST_REQUEST_GRACE)
        await super().shutdown(sockets)

    async def _wait_first_requests(self, deadline: float) -> None:
        """Until `deadline`, wait for every open connection that has not yet sent a whole
        request to send one (it is then in flight, answered before its connection closes)."""
        while not self.force_exit and time.monotonic() < deadline:
            if not any(_awaits_first_request(c) for c in self.server_state.connections):
                return
            await asyncio.sleep(0.02)


def _awaits_first_request(connection: object) -> bool:
    """Whether a uvicorn HTTP connection is open but no request of it has been parsed yet."""
    if getattr(connection, "cycle", True) is not None:  # a request (done or not); or not HTTP
        return False
    transport = getattr(connection, "transport", None)
    return transport is not None and not transport.is_closing()


async def _settle() -> None:
    for _ in range(_SETTLE_TURNS):
        await asyncio.sleep(0)


def run(app: FastAPI, settings: Settings, exit_process: bool = True) -> bool:
    """Serve `app` (made by create_app) until a signal ends it as described above. After a
    clean shutdown the process exits 0 here, without the interpreter's teardown, unless
    `exit_process` is false (then True); a start-up that failed returns False (the caller
    decides)."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        # json: no logging config of uvicorn's own, so its records go to the root logger's
        # JSON handler (contrastkit.service.observability.logs) rather than to its text handlers
        log_config=None if settings.log_format == "json" else LOGGING_CONFIG,
        # uvicorn types it int, but uses it as asyncio.wait_for's timeout: a float works
        timeout_graceful_shutdown=settings.graceful_timeout,  # type: ignore[arg-type]
        # uvicorn's default, 5 s, is httpx's own expiry of idle connections: a client
        # reusing one idle for just under 5 s raced the server closing it at 5 s, and the
        # request got a closed connection instead of an answer (issue 24)
        timeout_keep_alive=settings.keep_alive_seconds,  # type: ignore[arg-type]
    )
    server = GracefulServer(config, app.state.service)
    server.run()
    if not server.started:
        return False
    log.info("stopped cleanly")
    if exit_process:
        _exit_now()
    return True


def _exit_now() -> None:
    """Exit 0 without the interpreter's teardown: the server has stopped, the collections
    are closed and their logs fsynced, so only the modules' garbage is left, and with torch
    loaded collecting it takes seconds during which an orchestrator waits for the process
    (measured: 3.5-5 s on a busy 2-core machine, longer than serving the last request)."""
    logging.shutdown()  # flush and close every handler
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or a broken pipe
            stream.flush()
    os._exit(0)
