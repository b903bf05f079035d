"""A real uvicorn process for the shutdown tests: `contrastive serve`'s server (with its
signal handling) over a FakeEncoder whose text batches take `--text-delay` seconds, so a
test can hold requests in flight while it sends a signal. `GET /test/stall?seconds=S` blocks
the event loop for S seconds (as a long garbage collection or CPU-bound work in the loop
would), so a test can have requests arrive while the loop cannot read them.

    python tests/service/slow_server.py --port P --collections-dir DIR [--drain-seconds S]
        [--log-format json] [--access-log true]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from service import shutdown
from service.app import create_app
from service.observability import logs
from service.settings import Settings
from tests.helpers import FakeEncoder


class SlowTextEncoder(FakeEncoder):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        time.sleep(self.delay)
        return super()._text_forward(texts)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--collections-dir", required=True)
    p.add_argument("--drain-seconds", type=float, default=2.0)
    p.add_argument("--graceful-timeout", type=float, default=30.0)
    p.add_argument("--text-delay", type=float, default=0.0)
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
    app = create_app(settings, encoder=SlowTextEncoder(args.text_delay))

    @app.get("/test/stall")
    async def stall(seconds: float) -> dict[str, float]:
        time.sleep(seconds)  # on purpose: nothing else runs in the loop meanwhile
        return {"stalled": seconds}

    shutdown.run(app, settings)


if __name__ == "__main__":
    main()
