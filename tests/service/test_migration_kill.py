"""kill -9 in the middle of a migration (POST /v1/admin/migrations), on a real server
process: the restarted server serves the old collection through the alias as before, and
the migration started again resumes where it stopped and switches."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import (
    free_port,
    old_and_new_exports,
    serve_argv,
    wait_server_ready,
    wait_until,
)

N = 1500  # items: enough that a migration one item per batch takes seconds
BOSS = {"Authorization": "Bearer boss"}


class Server:
    """`contrastive serve` on both models (the old the default), admin key `boss`."""

    def __init__(self, tmp: Path, old: Path, new: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tmp / "server.log"
        port = int(self.url.rsplit(":", 1)[1])
        cmd = serve_argv(port, tmp / "cols", f"--models={new}", "--admin-key=boss", model=str(old))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_server_ready(self.url, self.proc, self.log.read_text)
        self.http = httpx.Client(base_url=self.url, timeout=60, headers=BOSS)

    def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        assert r.status_code == status, r.text
        return r.json()

    def kill(self) -> None:
        self.http.close()
        self.proc.kill()  # SIGKILL: no drain, no flush, no goodbye
        self.proc.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    running: list[Server] = []
    yield running
    for s in running:
        if s.proc.poll() is None:
            s.kill()


@pytest.mark.slow
def test_kill_9_mid_migration_leaves_the_old_serving_and_the_migration_resumes(
    tmp_path: Path, servers: list[Server]
) -> None:
    old, new = old_and_new_exports(tmp_path)
    servers.append(first := Server(tmp_path, old, new))
    first.ok("POST", "/v1/collections", 201, json={"name": "docs", "index": {"kind": "flat"}})
    for start in range(0, N, 500):
        items = [{"id": f"d{i}", "text": f"doc {i}", "source": f"doc {i}"}
                 for i in range(start, start + 500)]  # fmt: skip
        first.ok("POST", "/v1/collections/docs/items", json={"items": items})
    first.ok("PUT", "/v1/aliases/live", json={"collection": "docs"})
    new_id = first.ok("GET", "/v1/models")["data"][1]["id"]
    body = {"collection": "live", "model": new_id, "batch": 1}
    target = first.ok("POST", "/v1/admin/migrations", 202, json=body)["new"]

    def progressed() -> bool:
        status = first.ok("GET", "/v1/admin/migrations/live")
        assert status["state"] == "running", status  # killed before it could end
        return int(status["done"]) >= 20

    wait_until(progressed, 120, "the migration under way")
    first.kill()

    servers.append(second := Server(tmp_path, old, new))
    live = second.ok("GET", "/v1/collections/live")
    assert (live["name"], live["count"]) == ("docs", N)  # the alias did not move
    query = {"queries": [{"text": "doc 7"}], "k": 1}
    hits = second.ok("POST", "/v1/collections/live/search", json=query)["results"][0]
    assert hits[0]["id"] == "d7" and hits[0]["score"] > 0.999
    partial = second.ok("GET", f"/v1/collections/{target}")["count"]
    assert 20 <= partial < N  # what was written before the kill is there, and no more

    second.ok("POST", "/v1/admin/migrations", 202, json={**body, "batch": 64})
    wait_until(
        lambda: second.ok("GET", "/v1/admin/migrations/live")["state"] != "running",
        timeout=300, what="the resumed migration",
    )  # fmt: skip
    done = second.ok("GET", "/v1/admin/migrations/live")
    assert done["state"] == "switched", done
    assert done["written"] == N - partial  # resumed: what was there was skipped
    now = second.ok("GET", "/v1/collections/live")
    assert (now["name"], now["count"]) == (target, N)
    hits = second.ok("POST", "/v1/collections/live/search", json=query)["results"][0]
    assert hits[0]["id"] == "d7" and hits[0]["score"] > 0.999
