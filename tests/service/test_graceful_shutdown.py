"""Graceful shutdown against a real uvicorn process (tests/service/slow_server.py): SIGTERM
turns /readyz 503 at once, requests in flight finish, the collections are snapshotted and
the process exits 0; the wait for requests is bounded; SIGINT skips the drain delay. Every
request sent during the drain is answered, on fresh and on keep-alive connections, even when
the event loop is busy as the drain ends; the process exits once the last one is answered.
Plus the two settings behind a multi-replica deployment, in process.

Each step waits for a signal from the server (its queue depth in /metrics, a log line, an
answer on another connection), never a fixed time, so a busy machine makes these tests
slower, not red; how soon the exit follows the last answer is a `timing` test."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import torch

from contrastkit.service.index.factory import open_backend
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, free_port, timing_scale, wait_server_ready, wait_until

SCRIPT = Path(__file__).with_name("slow_server.py")


class Server:
    def __init__(self, tmp: Path, **opts: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.collections = tmp / "collections"
        self.log = tmp / "server.log"
        args = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
        cmd = [sys.executable, str(SCRIPT), f"--port={self.port}"]
        cmd += [f"--collections-dir={self.collections}", *args]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def wait_ready(self) -> None:
        wait_server_ready(self.url, self.proc, self.log.read_text)

    def queued_texts(self) -> float:
        """Text items queued or running in the server's batcher (/metrics)."""
        prefix = 'contrastive_queue_depth{modality="text"} '
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(prefix):
                return float(line.removeprefix(prefix))
        raise AssertionError("no text queue depth in /metrics")

    def logged(self, text: str) -> bool:
        return text in self.log.read_text()

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    servers: list[Server] = []

    def make(**opts: object) -> Server:
        server = Server(tmp_path, **opts)
        servers.append(server)
        server.wait_ready()
        return server

    yield make
    for s in servers:
        s.stop()


def test_sigterm_drains_finishes_in_flight_requests_flushes_and_exits_0(start) -> None:
    server: Server = start(drain_seconds=1.5, graceful_timeout=20, text_delay=2.0)
    http = server.http
    assert http.post("/v1/collections", json={"name": "c", "model_id": "raw", "dim": 4}).is_success
    before = http.post(
        "/v1/collections/c/items", json={"items": [{"id": "a", "vector": [1, 0, 0, 0]}]}
    )
    assert before.status_code == 200

    texts = [[f"text {i}", f"other {i}"] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(httpx.post, f"{server.url}/v1/embed/text", json={"texts": t}, timeout=60)
            for t in texts
        ]
        # the four requests (8 texts) are in the server, waiting on the 2-second batches
        wait_until(lambda: server.queued_texts() == 8, what="8 texts queued")
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # at once: the first /readyz asked after the signal already says so (no polling)
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert http.get("/healthz").status_code == 200
        # still served during the drain window, durably, with a hint to reconnect elsewhere
        during = http.post(
            "/v1/collections/c/items", json={"items": [{"id": "b", "vector": [0, 1, 0, 0]}]}
        )
        assert during.status_code == 200 and during.json()["count"] == 2
        assert during.headers["connection"] == "close"

        replies = [f.result() for f in futures]

    reference = FakeEncoder()
    for reply, batch in zip(replies, texts, strict=True):
        assert reply.status_code == 200, reply.text
        got = torch.tensor(reply.json()["embeddings"])
        assert torch.allclose(got, reference.encode_texts(batch), atol=1e-6)

    code = server.proc.wait(timeout=120)
    took = time.monotonic() - signalled
    log = server.log.read_text()
    assert code == 0, log
    assert took >= 1.5, f"exited {took:.2f} s after SIGTERM, before the 1.5 s drain ended"
    assert "SIGTERM: draining" in log and "stopped cleanly" in log, log
    with pytest.raises(httpx.TransportError):  # refused: nothing listens any more
        httpx.get(f"{server.url}/healthz", timeout=60)

    # both writes survived, and the shutdown left a snapshot: nothing to replay on start
    store = open_backend("faiss", server.collections)
    col = store.get("c")
    assert sorted(col.search(torch.eye(4)[:2].numpy(), 1)[i][0].id for i in range(2)) == ["a", "b"]
    assert col.count() == 2
    assert col.info().log_records == 0
    store.close()


def test_the_wait_for_requests_in_flight_is_bounded(start) -> None:
    server: Server = start(drain_seconds=0, graceful_timeout=1.0)
    # a request whose body never finishes arriving stays in flight until cancelled
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(
        b"POST /v1/embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"texts": ['
    )
    # an answer on a connection opened after it: the server has read the stalled request's
    # head by then (one event loop accepts and reads the connections in turn)
    assert server.http.get("/healthz").status_code == 200
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = server.proc.wait(timeout=120)
    took = time.monotonic() - signalled
    stalled.close()
    log = server.log.read_text()
    assert code == 0, log
    # the bound is the log's word, not a stopwatch (a busy machine stretches any exit);
    # the exit cannot come before the 1-second timeout, however fast the machine
    assert took >= 0.9, f"exited {took:.2f} s after SIGTERM, before the 1-s timeout"
    assert "graceful shutdown exceeded" in log, log


# A drain of an hour: a server that exits at all within the tests' wait skipped it.
HOUR = 3600


def test_sigint_skips_the_drain_delay(start) -> None:
    server: Server = start(drain_seconds=HOUR, graceful_timeout=5)
    server.proc.send_signal(signal.SIGINT)
    code = server.proc.wait(timeout=120)
    log = server.log.read_text()
    assert code == 0, log
    assert "SIGINT: draining (readyz 503) for 0.0 s" in log, log


def test_a_second_sigterm_ends_the_drain_at_once(start) -> None:
    server: Server = start(drain_seconds=HOUR, graceful_timeout=5)
    server.proc.send_signal(signal.SIGTERM)
    # readiness turns 503 when the first signal is handled: poll for it, no fixed sleep
    wait_until(lambda: server.http.get("/readyz").status_code == 503, 60)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=120) == 0, server.log.read_text()
    log = server.log.read_text()
    assert f"SIGTERM: draining (readyz 503) for {HOUR:.1f} s" in log, log
    assert "SIGTERM again: the drain ends now" in log, log


# -- every request of the drain is answered; the exit follows the last answer -----------------
class Connection:
    """One HTTP/1.1 connection on a plain socket (a load balancer's, or a fresh client's).
    `send` returns once the request is on the server's side of the loopback, which is what
    a test needs to know before it ends the drain; `answer` reads the reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.buffer = b""

    def send(self, path: str, texts: list[str] | None = None) -> Connection:
        """GET `path`, or POST `texts` to it (an embedding)."""
        body = b"" if texts is None else json.dumps({"texts": texts}).encode()
        head = f"{'GET' if texts is None else 'POST'} {path} HTTP/1.1\r\nHost: test\r\n"
        if texts is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)
        return self

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the connection closed without an answer")
        self.buffer += chunk

    def answer(self, name: str) -> Outcome:
        try:
            while b"\r\n\r\n" not in self.buffer:
                self._read()
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            first, *lines = head.decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)
            }
            while len(self.buffer) < int(headers.get("content-length", "0")):
                self._read()
        except OSError as e:  # reset, closed, or no answer in 120 s
            return Outcome(name, error=f"{type(e).__name__}: {e}")
        self.buffer = self.buffer[int(headers.get("content-length", "0")) :]
        return Outcome(name, int(first.split()[1]), headers.get("connection"))


@dataclass
class Outcome:
    """What one request got: a status and Connection header, or the error of a connection
    that closed (or was reset) without a reply."""

    name: str
    status: int | None = None
    connection: str | None = None
    error: str | None = None


def _keep_alive_client(url: str) -> httpx.Client:
    """A client whose pooled connection outlives the test (as a load balancer's would):
    httpx's own 5-second expiry would otherwise hide a connection the server closed."""
    limits = httpx.Limits(max_connections=1, keepalive_expiry=120)
    return httpx.Client(base_url=url, timeout=120, limits=limits)


@pytest.mark.slow
def test_every_request_sent_during_the_drain_is_answered_even_with_a_busy_loop(
    start, tmp_path: Path
) -> None:
    """The drain lasts an hour, and a second SIGTERM ends it while the event loop is blocked
    (as by a long garbage collection) with requests sent and unread: on fresh connections
    (in the listen backlog) and on keep-alive ones opened before the signal (a load
    balancer's pool). Every request sent during the drain is answered, with `Connection:
    close`; an idle keep-alive connection neither fails nor holds the exit."""
    server: Server = start(drain_seconds=HOUR, graceful_timeout=60, text_delay=0.5)
    port = server.port
    pooled = [Connection(port) for _ in range(8)]
    for i, conn in enumerate(pooled):
        assert conn.send("/healthz").answer(f"pooled {i}").status == 200  # then idle
    # two requests in flight as the signal comes
    in_flight = [
        (f"in flight {i}", Connection(port).send("/v1/embed/text", [f"in flight {i}"]))
        for i in (1, 2)
    ]
    wait_until(lambda: server.queued_texts() == 2, what="2 texts queued")
    server.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: server.logged("SIGTERM: draining"), what="the drain")

    # during the drain, on a fresh connection and on a pooled one
    outcomes = [
        Connection(port).send("/healthz").answer("fresh probe during the drain"),
        pooled[0].send("/v1/embed/text", ["pooled"]).answer("pooled embed during the drain"),
    ]
    # the event loop blocked until the test lets it go; requests arrive meanwhile, unread
    release = tmp_path / "release"
    stalled = [("stall", Connection(port).send(f"/test/stall?until={quote(str(release))}"))]
    wait_until(lambda: server.logged("the event loop is blocked"), what="the stall")
    for i in range(3):
        stalled += [
            (f"fresh embed {i}", Connection(port).send("/v1/embed/text", [f"fresh {i}"])),
            (f"pooled embed {i}", pooled[1 + 2 * i].send("/v1/embed/text", [f"pooled {i}"])),
            (f"pooled probe {i}", pooled[2 + 2 * i].send("/healthz")),
        ]
    # pooled[7] stays idle throughout: it must neither fail anything nor delay the exit
    server.proc.send_signal(signal.SIGTERM)  # the drain ends now, the loop still blocked
    wait_until(lambda: server.logged("SIGTERM again: the drain ends now"), what="its end")
    release.touch()
    outcomes += [conn.answer(name) for name, conn in stalled]
    outcomes += [conn.answer(name) for name, conn in in_flight]
    code = server.proc.wait(timeout=120)
    for conn in pooled:
        conn.sock.close()

    log = server.log.read_text()
    assert len(outcomes) == 14, outcomes
    unanswered = [o for o in outcomes if o.status != 200]
    assert not unanswered, f"{unanswered}\n{log}"
    drained = [o for o in outcomes if not o.name.startswith("in flight")]
    assert all(o.connection == "close" for o in drained), drained
    assert code == 0, log
    # nothing held the exit to the 60-s timeout: not the idle connection, nor a request
    assert "graceful shutdown exceeded" not in log, log


@pytest.mark.slow
def test_the_process_exits_once_the_last_request_is_answered(start, tmp_path: Path) -> None:
    """A request still running when the drain ends is answered (the test holds it until the
    shutdown waits for it), then the process exits: without waiting for the 30-s graceful
    timeout, and skipping the interpreter's teardown."""
    gate = tmp_path / "gate"
    server: Server = start(drain_seconds=0.5, graceful_timeout=30, text_gate=gate)
    idle = _keep_alive_client(server.url)  # an idle keep-alive connection does not hold it
    assert idle.get("/healthz").status_code == 200
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(
            lambda: httpx.post(f"{server.url}/v1/embed/text", json={"texts": ["x"]}, timeout=120)
        )
        wait_until(lambda: server.queued_texts() == 1, what="the request queued")
        server.proc.send_signal(signal.SIGTERM)
        # the drain has ended: uvicorn's shutdown waits for the request in flight
        wait_until(lambda: server.logged("Shutting down"), what="the shutdown")
        gate.touch()
        assert reply.result().status_code == 200
    code = server.proc.wait(timeout=120)
    idle.close()
    log = server.log.read_text()
    assert code == 0, log
    assert "graceful shutdown exceeded" not in log, log
    assert "interpreter teardown" not in log, log  # slow_server says so at exit if it runs


@pytest.mark.timing
def test_the_exit_comes_within_seconds_of_the_last_answer(start) -> None:
    """How soon: within 2 s (x CONTRASTIVE_TIMING_SCALE) of the last answer, not after the
    30-s graceful timeout nor the seconds of interpreter teardown with torch loaded."""
    server: Server = start(drain_seconds=0.5, graceful_timeout=30, text_delay=3.0)
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(
            lambda: httpx.post(f"{server.url}/v1/embed/text", json={"texts": ["x"]}, timeout=120)
        )
        wait_until(lambda: server.queued_texts() == 1, what="the request queued")
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert reply.result().status_code == 200
        answered = time.monotonic() - signalled
    code = server.proc.wait(timeout=120)
    exited = time.monotonic() - signalled
    assert code == 0, server.log.read_text()
    bound = 2.0 * timing_scale()
    assert exited - answered < bound, f"answered at {answered:.2f} s, exited at {exited:.2f} s"


# -- in process: the settings a multi-replica deployment uses ---------------------------------
def test_a_replica_without_collections_refuses_them_and_opens_no_folder(
    fake_app_factory, tmp_path: Path
) -> None:
    folder = tmp_path / "never-created"
    client = fake_app_factory(Settings(collections=False, collections_dir=str(folder)))
    for method, path, body in [
        ("GET", "/v1/collections", None),
        ("POST", "/v1/collections", {"name": "c"}),
        ("POST", "/v1/collections/c/search", {"queries": [{"text": "x"}]}),
        ("DELETE", "/v1/collections/c", None),
    ]:
        r = client.request(method, path, json=body)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] == "collections_disabled"
    # refused before the body is read: a malformed one gets the same answer
    broken = client.post(
        "/v1/collections", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 404 and broken.json()["error"]["code"] == "collections_disabled"
    assert not any(
        p.startswith("/v1/collections") for p in client.get("/openapi.json").json()["paths"]
    )
    assert client.post("/v1/embed/text", json={"texts": ["still embeds"]}).status_code == 200
    assert not folder.exists()


def test_draining_responses_ask_clients_to_reconnect(fake_app_factory) -> None:
    client = fake_app_factory()
    assert client.get("/healthz").headers.get("connection") != "close"
    client.app.state.service.draining = True
    r = client.get("/healthz")
    assert r.headers["connection"] == "close"
    assert client.get("/readyz").status_code == 503
