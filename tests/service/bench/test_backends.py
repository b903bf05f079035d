"""The backend benchmark runs end to end on a small collection and reports honest figures."""

from __future__ import annotations

import pytest

pytest.importorskip("qdrant_client")

from contrastkit.service.bench.backends import bench_backends


def test_bench_backends_reports_times_recall_and_ratios() -> None:
    r = bench_backends(n=400, dim=32, queries=8, k=5, batch=150)
    assert (r["n"], r["dim"], r["qdrant_mode"]) == (400, 32, "local")
    for side in ("faiss", "qdrant"):
        fig = r[side]
        assert fig["upsert_s"] > 0 and fig["search_s"] > 0 and fig["reopen_s"] > 0
        assert fig["search_qps"] == pytest.approx(8 / fig["search_s"])
        # both search exactly here (flat / local mode): every true neighbour comes back
        assert fig["recall"] == 1.0 and fig["filtered_recall"] == 1.0
    ratio = r["qdrant_over_faiss"]
    assert ratio["upsert_s"] == pytest.approx(r["qdrant"]["upsert_s"] / r["faiss"]["upsert_s"])
    assert set(ratio) == {"upsert_s", "reopen_s", "search_s", "filtered_search_s"}
