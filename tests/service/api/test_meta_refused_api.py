"""Over HTTP: a collection whose collection.json was lost or edited while the server was
stopped answers 503 collection_corrupt and is listed in /readyz; another collection
answers 200; the name answers 409 on create; the collection's files are left as they were.

(Before, a lost collection.json made the collection vanish: 404, unlisted, its name 409,
its files left behind; an edited `dim` served every vector cut to the new width as ok.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, fill_collections, unit_rows, wait_ready

C = "/v1/collections"
QUERY = {"queries": [{"vector": [1, 0, 0, 0, 0, 0, 0, 0]}], "k": 3}


def _damage(folder: Path, how: str) -> None:
    meta = folder / "collection.json"
    if how == "missing":
        meta.unlink()
    else:  # the edit: dim 8 -> 4
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "dim": 4}, indent=2))


@pytest.mark.parametrize("how", ["missing", "dim-edited"])
def test_a_damaged_collection_json_is_503_for_its_collection_and_200_for_another(
    tmp_path: Path, how: str
) -> None:
    rows = unit_rows(20, 8).tolist()
    with TestClient(create_app(Settings(), encoder=FakeEncoder())) as client:
        wait_ready(client)
        fill_collections(client, ("a", "b"), rows)
    folder = Path(os.environ["CONTRASTIVE_COLLECTIONS_DIR"]) / "a"
    _damage(folder, how)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    with TestClient(create_app(Settings(), encoder=FakeEncoder())) as client:
        wait_ready(client)
        a = client.post(f"{C}/a/search", json=QUERY)
        assert a.status_code == 503, a.text
        error = a.json()["error"]
        assert error["code"] == "collection_corrupt"
        why = error["message"]
        words = "collection.json is missing" if how == "missing" else "fails its checksum"
        assert words in why and "refused" in why, why
        assert client.get(f"{C}/a/items/a-0").status_code == 503
        b = client.post(f"{C}/b/search", json=QUERY)
        assert (b.status_code, len(b.json()["results"][0])) == (200, 3)
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready"
        assert ready["collections_refused"] == {"a": why}
        assert ready["collections_refused_count"] == 1
        listed = [c["name"] for c in client.get(C).json()["collections"]]
        assert listed == ["b"]
        again = client.post(C, json={"name": "a"})
        assert again.status_code == 409
        assert "holds a refused collection" in again.json()["error"]["message"]
    # the shutdown snapshots the collections it serves; the refused one is not touched
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
