"""Time a graceful shutdown: SIGTERM -> /readyz 503, an in-flight request's answer, exit.

    PYTHONPATH=. python scripts/shutdown_timing.py [--runs 2]

Runs tests/service/slow_server.py (the real server class over a FakeEncoder whose text
batches take 3 s) with drain_seconds 2; one request is in flight when SIGTERM is sent.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx

from tests.helpers import free_port, wait_server_ready


def one_run() -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "tests/service/slow_server.py", f"--port={port}"]
    cmd += [f"--collections-dir={tempfile.mkdtemp()}/c", "--drain-seconds=2", "--text-delay=3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_server_ready(url, proc, lambda: "")
    reply: dict[str, Any] = {}

    def request() -> None:
        r = httpx.post(f"{url}/v1/embed/text", json={"texts": ["x"]}, timeout=30)
        reply.update(status=r.status_code, at=time.monotonic())

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.5)  # the request now waits on its 3-second batch
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    while httpx.get(f"{url}/readyz").status_code != 503:
        pass
    not_ready = time.monotonic() - t0
    code = proc.wait()
    exited = time.monotonic() - t0
    thread.join()
    return (
        f"readyz 503 after {not_ready * 1000:.0f} ms; the in-flight request -> "
        f"{reply['status']} at {reply['at'] - t0:.2f} s; exit {code} after {exited:.2f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=2)
    for _ in range(p.parse_args().runs):
        print(one_run())


if __name__ == "__main__":
    main()
