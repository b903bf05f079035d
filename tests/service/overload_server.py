"""A real uvicorn process for the overload test: `contrastive serve`'s server over a
FakeEncoder whose image forward takes a fixed `--per-item` seconds per image, so its
capacity is known exactly (1 / per_item images per second, whatever the batch size).

    python tests/service/overload_server.py --port P --collections-dir DIR \
        --per-item 0.025 --max-queue-wait-ms 1000 --max-batch-size 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from contrastkit.service import shutdown
from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder


class FixedCostEncoder(FakeEncoder):
    def __init__(self, per_item: float) -> None:
        super().__init__()
        self.per_item = per_item

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        time.sleep(self.per_item * len(pixels))
        return super()._image_forward(pixels)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--collections-dir", required=True)
    p.add_argument("--per-item", type=float, required=True)
    p.add_argument("--max-queue-wait-ms", type=float, required=True)
    p.add_argument("--max-batch-size", type=int, required=True)
    args = p.parse_args()
    settings = Settings(
        port=args.port,
        collections_dir=args.collections_dir,
        max_queue_wait_ms=args.max_queue_wait_ms,
        max_batch_size=args.max_batch_size,
        log_level="warning",  # no access log line per request at 160 requests/s
    )
    shutdown.run(create_app(settings, encoder=FixedCostEncoder(args.per_item)), settings)


if __name__ == "__main__":
    main()
