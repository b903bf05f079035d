"""Over HTTP: a collection whose snapshot is truncated under the running server answers
503 collection_corrupt and is listed in /readyz; another collection answers 200.

The server runs in a child process: were the rows still read from the truncated mapping,
SIGBUS would kill the child (returncode -7), not the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, fill_collections, wait_ready

C = "/v1/collections"
ROWS = 600  # 8-d rows: a snapshot of ~30 KB, its rows past the first 4096 bytes

CHILD = """
import json, os, sys
from fastapi.testclient import TestClient
from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, wait_ready

snap = sys.argv[1]
query = {"queries": [{"vector": [1, 0, 0, 0, 0, 0, 0, 0]}], "k": 3}
with TestClient(create_app(Settings(), encoder=FakeEncoder())) as client:
    wait_ready(client)
    for name in ("a", "b"):  # both served from their mapped snapshots
        assert client.post(f"/v1/collections/{name}/search", json=query).status_code == 200
    os.truncate(snap, 4096)
    a = client.post("/v1/collections/a/search", json=query)
    b = client.post("/v1/collections/b/search", json=query)
    out = {
        "a": [a.status_code, a.json()],
        "b": [b.status_code, len(b.json()["results"][0])],
        "get_a": client.get("/v1/collections/a/items/a-0").status_code,
        "readyz": client.get("/readyz").json(),
        "listed": [c["name"] for c in client.get("/v1/collections").json()["collections"]],
    }
print(json.dumps(out), flush=True)
"""


def test_a_truncated_snapshot_is_503_for_its_collection_and_200_for_another(
    tmp_path: Path,
) -> None:
    rows = np.random.default_rng(0).standard_normal((ROWS, 8)).tolist()
    with TestClient(create_app(Settings(), encoder=FakeEncoder())) as client:
        wait_ready(client)
        fill_collections(client, ("a", "b"), rows)
    # the shutdown snapshotted both: the next start serves them from snapshot.bin
    snap = Path(os.environ["CONTRASTIVE_COLLECTIONS_DIR"]) / "a" / "snapshot.bin"
    size = snap.stat().st_size
    assert size > 3 * 4096

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(snap)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])  # -7: SIGBUS
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    status, body = out["a"]
    assert (status, body["error"]["code"]) == (503, "collection_corrupt")
    why = body["error"]["message"]
    assert "snapshot.bin" in why and f"{size} bytes" in why and "4096 bytes" in why
    assert out["b"] == [200, 3]
    assert out["get_a"] == 503
    assert out["readyz"]["status"] == "ready"
    assert out["readyz"]["collections_refused"] == {"a": why}
    assert out["listed"] == ["b"]
    assert snap.stat().st_size == 4096  # kept as the damage left it
