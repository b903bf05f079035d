"""A real uvicorn process for the shutdown tests: `contrastive serve`'s server (with its
signal handling) over a FakeEncoder whose text batches take `--text-delay` seconds, and
with `--text-gate FILE` wait until FILE exists first, so a test can hold requests in flight
while it sends a signal. `GET /test/stall?until=FILE` blocks the event loop until FILE
exists (`seconds=S`: for S seconds), as a long garbage collection or CPU-bound work in the
loop would, so a test can have requests arrive while the loop cannot read them; it says
"the event loop is blocked" on stdout first. Its interpreter teardown, should it run,
says "interpreter teardown" (`contrastive serve` skips it).

    python tests/service/slow_server.py --port P --collections-dir DIR [--drain-seconds S]
        [--text-delay S] [--text-gate FILE] [--log-format json] [--access-log true]
"""

from __future__ import annotations

import argparse
import atexit
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from contrastkit.service import shutdown
from contrastkit.service.app import create_app
from contrastkit.service.observability import logs
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder

GIVE_UP_S = 600.0  # a wait for a file the test never makes ends here (the test failed)


def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + GIVE_UP_S
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


class SlowTextEncoder(FakeEncoder):
    """Text batches take `delay` s; with a `gate`, every one but the first (the start-up's
    warm-up) waits for the gate file first."""

    def __init__(self, delay: float, gate: Path | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.gate = gate
        self.forwards = 0

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        self.forwards += 1
        if self.gate is not None and self.forwards > 1:
            wait_for_file(self.gate)
        time.sleep(self.delay)
        return super()._text_forward(texts)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--collections-dir", required=True)
    p.add_argument("--drain-seconds", type=float, default=2.0)
    p.add_argument("--graceful-timeout", type=float, default=30.0)
    p.add_argument("--text-delay", type=float, default=0.0)
    p.add_argument("--text-gate", type=Path, default=None)
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--access-log", choices=["true", "false"], default="false")
    args = p.parse_args()
    settings = Settings(
        port=args.port,
        collections_dir=args.collections_dir,
        drain_seconds=args.drain_seconds,
        graceful_timeout=args.graceful_timeout,
        max_wait_ms=50,  # concurrent requests share one (slow) batch
        log_format=args.log_format,
        access_log=args.access_log == "true",
    )
    logs.configure("info", settings.log_format)  # as `contrastive serve` does
    app = create_app(settings, encoder=SlowTextEncoder(args.text_delay, args.text_gate))

    @app.get("/test/stall")
    async def stall(seconds: float = 0.0, until: str | None = None) -> dict[str, float]:
        print("the event loop is blocked", flush=True)
        t0 = time.monotonic()
        # on purpose: nothing else runs in the loop meanwhile
        if until is not None:
            wait_for_file(Path(until))
        else:
            time.sleep(seconds)
        return {"stalled": time.monotonic() - t0}

    atexit.register(print, "interpreter teardown", flush=True)
    shutdown.run(app, settings)


if __name__ == "__main__":
    main()
