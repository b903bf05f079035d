"""Graceful shutdown against a real uvicorn process (tests/service/slow_server.py): SIGTERM
turns /readyz 503 at once, requests in flight finish, the collections are snapshotted and
the process exits 0; the wait for requests is bounded; SIGINT skips the drain delay. Every
request sent during the drain is answered, on fresh and on keep-alive connections, even when
the event loop is busy as the drain ends; the process exits once the last one is answered.
Plus the two settings behind a multi-replica deployment, in process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from service.index.factory import open_backend
from service.settings import Settings
from tests.helpers import FakeEncoder, free_port, wait_server_ready, wait_until

SCRIPT = Path(__file__).with_name("slow_server.py")


class Server:
    def __init__(self, tmp: Path, **opts: float) -> None:
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

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    servers: list[Server] = []

    def make(**opts: float) -> Server:
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
            pool.submit(httpx.post, f"{server.url}/v1/embed/text", json={"texts": t}, timeout=30)
            for t in texts
        ]
        time.sleep(0.5)  # the four requests are now waiting on the 2-second batch
        assert not any(f.done() for f in futures)
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        ready = http.get("/readyz")
        readyz_after = time.monotonic() - signalled
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert readyz_after < 1.0, f"/readyz turned 503 only after {readyz_after:.2f} s"
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

    code = server.proc.wait(timeout=40)
    took = time.monotonic() - signalled
    log = server.log.read_text()
    assert code == 0, log
    assert took >= 1.5, f"exited {took:.2f} s after SIGTERM, before the 1.5 s drain ended"
    assert "SIGTERM: draining" in log and "stopped cleanly" in log, log
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=2)

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
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = server.proc.wait(timeout=30)
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
@dataclass
class Outcome:
    """What one request got: a status and Connection header, or the transport error that a
    connection closed without a reply raises. Times in seconds after SIGTERM."""

    name: str
    sent: float
    done: float
    status: int | None = None
    connection: str | None = None
    error: str | None = None


def _send(name: str, client: httpx.Client, path: str, t0: float, at: float) -> Outcome:
    """At `at` s after `t0`, POST /v1/embed/text or GET any other path over `client`."""
    time.sleep(max(0.0, t0 + at - time.monotonic()))
    sent = time.monotonic() - t0
    try:
        if path == "/v1/embed/text":
            r = client.post(path, json={"texts": [name]})
        else:
            r = client.get(path)
    except httpx.TransportError as e:
        return Outcome(name, sent, time.monotonic() - t0, error=f"{type(e).__name__}: {e}")
    return Outcome(name, sent, time.monotonic() - t0, r.status_code, r.headers.get("connection"))


def _keep_alive_client(url: str) -> httpx.Client:
    """A client whose pooled connection outlives the test (as a load balancer's would):
    httpx's own 5-second expiry would otherwise hide a connection the server closed."""
    limits = httpx.Limits(max_connections=1, keepalive_expiry=120)
    return httpx.Client(base_url=url, timeout=60, limits=limits)


@pytest.mark.slow
def test_every_request_sent_during_the_drain_is_answered_even_with_a_busy_loop(start) -> None:
    drain = 3.0
    server: Server = start(drain_seconds=drain, graceful_timeout=20, text_delay=0.5)
    # idle keep-alive connections, opened before the signal (a load balancer's pool)
    pooled = [_keep_alive_client(server.url) for _ in range(8)]
    for client in pooled:
        assert client.get("/healthz").status_code == 200
    fresh = [httpx.Client(base_url=server.url, timeout=60) for _ in range(8)]
    plan: list[tuple[str, httpx.Client, str, float]] = [
        ("in flight 1", fresh[0], "/v1/embed/text", -0.2),
        ("in flight 2", fresh[1], "/v1/embed/text", -0.2),
        ("fresh at 30%", fresh[2], "/healthz", 0.3 * drain),
        ("pooled at 30%", pooled[0], "/v1/embed/text", 0.3 * drain),
    ]
    # From 45% of the drain until 0.6 s after it, the event loop is blocked (as by a long
    # garbage collection): everything sent meanwhile waits, unread, until the drain is over.
    stall = 0.55 * drain + 0.6
    plan.append(("stall", fresh[3], f"/test/stall?seconds={stall}", 0.45 * drain))
    for i, share in enumerate((0.5, 0.6, 0.7)):
        at = share * drain
        plan.append((f"fresh at {share:.0%}", fresh[4 + i], "/v1/embed/text", at))
        plan.append((f"pooled embed at {share:.0%}", pooled[1 + 2 * i], "/v1/embed/text", at))
        plan.append((f"pooled probe at {share:.0%}", pooled[2 + 2 * i], "/healthz", at))
    # pooled[7] stays idle throughout: it must neither fail anything nor delay the exit

    t0 = time.monotonic() + 0.5
    with ThreadPoolExecutor(len(plan)) as pool:
        futures = [pool.submit(_send, name, c, path, t0, at) for name, c, path, at in plan]
        time.sleep(max(0.0, t0 - time.monotonic()))
        server.proc.send_signal(signal.SIGTERM)
        outcomes = [f.result() for f in futures]
        code = server.proc.wait(timeout=60)
        exited = time.monotonic() - t0
    for client in pooled + fresh:
        client.close()

    log = server.log.read_text()
    # a thread the busy machine started late, after the drain, may find the port closed
    during = [o for o in outcomes if o.sent < drain]
    assert len(during) >= 10, outcomes
    unanswered = [o for o in during if o.status != 200]
    assert not unanswered, f"{unanswered}\n{log}"
    drained = [o for o in during if o.sent > 0.1]
    assert all(o.connection == "close" for o in drained), drained
    assert code == 0, log
    last = max(o.done for o in during)
    assert last > drain  # the stall held the answers past the drain: they were in flight
    assert exited - last < 3.0, f"exited {exited:.2f} s after SIGTERM, last answer {last:.2f} s"


@pytest.mark.slow
def test_the_process_exits_once_the_last_request_is_answered(start) -> None:
    server: Server = start(drain_seconds=0.5, graceful_timeout=30, text_delay=3.0)
    idle = _keep_alive_client(server.url)  # an idle keep-alive connection does not hold it
    assert idle.get("/healthz").status_code == 200
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(
            lambda: httpx.post(f"{server.url}/v1/embed/text", json={"texts": ["x"]}, timeout=60)
        )
        time.sleep(0.5)  # the request now waits on its 3-second batch
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert reply.result().status_code == 200
        answered = time.monotonic() - signalled
    code = server.proc.wait(timeout=60)
    exited = time.monotonic() - signalled
    idle.close()
    assert code == 0, server.log.read_text()
    assert answered > 2.0  # the batch ran past the 0.5 s drain: uvicorn waited for it
    # not the 30 s graceful timeout, nor seconds of interpreter teardown
    assert exited - answered < 2.0, f"answered at {answered:.2f} s, exited at {exited:.2f} s"


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
