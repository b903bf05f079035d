"""A minimal keep-alive HTTP/1.1 load generator for the benchmarks.

Why not httpx: on a 2-core machine the load generator shares the CPU with the server,
and httpx spends ~0.5 ms of CPU per request; this spends a few microseconds (pre-built
request bytes, one read of the headers, Content-Length framing).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, one per OK response
    errors: dict[int, int] = field(default_factory=dict)  # status -> count

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def build_request(
    host: str, port: int, path: str, body: bytes, content_type: str, key: str | None
) -> bytes:
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    if key:
        head.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _worker(host: str, port: int, request: bytes, stop_at: float, res: LoadResult) -> None:
    """Requests back to back on one connection until `stop_at`; the first is sent however
    late the connection opened (on a busy machine, after a short run's end), so every
    connection measures something."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        first = True
        while first or time.perf_counter() < stop_at:
            first = False
            t0 = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            if status == 200:
                res.latencies.append(time.perf_counter() - t0)
            else:
                res.errors[status] = res.errors.get(status, 0) + 1
    finally:
        writer.close()


async def run_load(
    host: str, port: int, request: bytes, concurrency: int, seconds: float, warmup: float = 1.0
) -> LoadResult:
    """`concurrency` connections send `request` back to back; warm-up results are dropped."""
    if warmup > 0:
        await run_load(host, port, request, concurrency, warmup, warmup=0)
    res = LoadResult(concurrency, seconds)
    stop_at = time.perf_counter() + seconds
    await asyncio.gather(*(_worker(host, port, request, stop_at, res) for _ in range(concurrency)))
    return res
