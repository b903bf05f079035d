"""Graceful shutdown against a real uvicorn process (tests/service/slow_server.py): SIGTERM
turns /readyz 503 at once, requests in flight finish, the collections are snapshotted and
the process exits 0; the wait for requests is bounded; SIGINT skips the drain delay.
Plus the two settings behind a multi-replica deployment, in process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from service.index.factory import open_backend
from service.settings import Settings
from tests.helpers import FakeEncoder, free_port, wait_server_ready

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
    assert 0.9 <= took < 10, f"exited {took:.2f} s after SIGTERM (timeout 1 s)"
    assert "graceful shutdown exceeded" in log, log


def test_sigint_skips_the_drain_delay(start) -> None:
    server: Server = start(drain_seconds=60, graceful_timeout=5)
    server.proc.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    code = server.proc.wait(timeout=30)
    assert code == 0, server.log.read_text()
    assert time.monotonic() - signalled < 20  # not the 60-second drain


def test_a_second_sigterm_ends_the_drain_at_once(start) -> None:
    server: Server = start(drain_seconds=60, graceful_timeout=5)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert server.http.get("/readyz").status_code == 503
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert server.proc.wait(timeout=30) == 0, server.log.read_text()
    assert time.monotonic() - signalled < 20


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
