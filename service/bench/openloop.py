"""An open-loop load generator: requests go out at their due times whatever the answers.

Clients that wait for each answer before sending again (a closed loop, contrastkit.service.bench.
loadgen) slow down with the server, so they never show what overload does: the offered
rate stays what they can get. Here the due times are fixed in advance (a Poisson process
at the offered rate, seeded), each request takes an idle keep-alive connection or opens a
new one, and its time is counted from when it was due, so a request that waited for the
client (or for a connection) counts that wait too.

A request that gets no answer is recorded with what happened, because "no answer" has
several causes worth telling apart: the connection could not be opened (`connect`), the
server closed a connection before answering, on a fresh one (`closed`) or on one kept
alive from an earlier request (`closed_on_reuse`, the keep-alive race: the server
closes an idle connection just as the client sends on it), the connection was reset
(`reset`), or no answer came in time (`timeout`).

Like loadgen, it spends microseconds a request (pre-built request bytes, one read of the
headers, Content-Length framing): on a 2-core machine it shares the CPU with the server.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(frozen=True)
class Outcome:
    """One request: when it was due, how long from then to its answer (or failure), the
    status (None: no answer), what went wrong without one, how late it was sent, and
    whether it went on a kept-alive connection."""

    due: float
    seconds: float
    status: int | None
    error: str | None = None
    lag: float = 0.0
    reused: bool = False


def arrivals(rate: float, seconds: float, seed: int = 0) -> list[float]:
    """Due times (seconds from the start) of a Poisson process of `rate` per second over
    `seconds`: exponential gaps, so requests bunch as independent clients' do."""
    rng = random.Random(seed)
    due: list[float] = []
    t = rng.expovariate(rate)
    while t < seconds:
        due.append(t)
        t += rng.expovariate(rate)
    return due


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One HTTP/1.1 response -> (status, whether the server keeps the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, keep = 0, True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    await reader.readexactly(length)
    return status, keep


class ConnectionPool:
    """Idle keep-alive connections to one server, most recently used first (as a client's
    pool reuses them), and new ones as needed, at most `limit` open at once."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        self.idle: deque[Connection] = deque()
        self.slots = asyncio.Semaphore(limit)

    async def take(self) -> tuple[Connection, bool]:
        """A connection, and whether it was kept alive from an earlier request."""
        await self.slots.acquire()
        while self.idle:
            conn = self.idle.pop()
            if not conn[0].at_eof():  # the server closed it while idle: never sent on
                return conn, True
            conn[1].close()
        try:
            return await asyncio.open_connection(self.host, self.port), False
        except BaseException:
            self.slots.release()
            raise

    def give_back(self, conn: Connection, keep: bool) -> None:
        if keep:
            self.idle.append(conn)
        else:
            conn[1].close()
        self.slots.release()

    def close(self) -> None:
        while self.idle:
            self.idle.pop()[1].close()


async def _send(pool: ConnectionPool, request: bytes, due: float, timeout: float) -> Outcome:
    def outcome(status: int | None, error: str | None, lag: float, reused: bool) -> Outcome:
        return Outcome(due, time.perf_counter() - due, status, error, lag, reused)

    try:
        conn, reused = await asyncio.wait_for(pool.take(), timeout)
    except (OSError, TimeoutError):
        return outcome(None, "connect", time.perf_counter() - due, False)
    lag = time.perf_counter() - due
    keep = False
    try:
        conn[1].write(request)
        status, keep = await asyncio.wait_for(read_response(conn[0]), timeout)
        return outcome(status, None, lag, reused)
    except asyncio.IncompleteReadError:
        return outcome(None, "closed_on_reuse" if reused else "closed", lag, reused)
    except ConnectionResetError:
        return outcome(None, "reset", lag, reused)
    except (TimeoutError, OSError) as e:
        return outcome(None, "timeout" if isinstance(e, TimeoutError) else "reset", lag, reused)
    finally:
        pool.give_back(conn, keep)


async def offer(
    host: str,
    port: int,
    request: bytes,
    rate: float,
    seconds: float,
    seed: int = 0,
    timeout: float = 30.0,
    max_connections: int = 2000,
) -> list[Outcome]:
    """Send `request` at the due times of `arrivals(rate, seconds, seed)`, whatever the
    answers; -> one Outcome per request, in due order."""
    pool = ConnectionPool(host, port, max_connections)
    start = time.perf_counter()
    tasks = []
    try:
        for t in arrivals(rate, seconds, seed):
            due = start + t
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(_send(pool, request, due, timeout)))
        return list(await asyncio.gather(*tasks))
    finally:
        pool.close()
