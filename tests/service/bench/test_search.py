"""Smoke test of `contrastive bench search`: a quick run writes sensible JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from contrastkit.service.bench import search as bench_search


@pytest.mark.slow
def test_bench_search_quick_run_writes_rows(tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    bench_search.add_arguments(p)
    out = tmp_path / "out"
    quick = ["--quick", "--n", "5000", "--queries", "300", "--seconds", "0.2", "--add-n", "2000"]
    args = p.parse_args([*quick, "--device", "cpu", "--out", str(out)])
    assert bench_search.run(args) == 0
    (path,) = out.glob("search-*.json")
    result = json.loads(path.read_text())
    assert result["benchmark"] == "search"
    assert (result["n"], result["dim"]) == (5000, 384)
    rows = {(r["path"], r["batch"]): r for r in result["search"]}
    for path_ in (
        "raw FAISS IndexFlatIP",
        "Collection flat, in-process",
        "Collection flat, reopened",
        "HTTP search, 1 connection",
        "Collection ivf",
        "Collection hnsw",
        "Collection ivf, reopened",
    ):
        for batch in (1, 64, 256):
            r = rows[(path_, batch)]
            assert r["queries_per_s"] > 0
            assert r["ratio_to_raw"] > 0
            assert r.get("errors") in (None, {})
    assert rows[("Collection flat, in-process", 1)]["recall"] == 1.0
    assert rows[("Collection flat, reopened", 1)]["recall"] == 1.0
    assert rows[("Collection hnsw", 1)]["recall"] > 0.9
    assert [a["kind"] for a in result["add"]] == ["flat", "hnsw"]
    assert all(a["vectors_per_s"] > 0 for a in result["add"])
    assert result["device_name"]
